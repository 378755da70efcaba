//! The real provider's bad days, on demand: server errors, hangs, garbage output, refusals,
//! exhausted quota, and 429 bursts. Rates are probabilities per call, drawn from the simulator's
//! seeded generator, so a run repeats.

use std::time::Duration;

use rand::Rng;

/// Fault knobs (all off by default).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FaultConfig {
    /// Share of calls answered 500/502/503 with OpenAI's server_error body.
    #[arg(long = "sim-error-rate", env = "HNC_SIM_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub server_error: f64,

    /// Share of calls that never answer (until the client gives up).
    #[arg(long = "sim-hang-rate", env = "HNC_SIM_HANG_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub hang: f64,

    /// Share of calls answered 200 with text that is not JSON.
    #[arg(long = "sim-garbage-rate", env = "HNC_SIM_GARBAGE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub garbage: f64,

    /// Share of calls answered with a refusal.
    #[arg(long = "sim-refusal-rate", env = "HNC_SIM_REFUSAL_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub refusal: f64,

    /// Share of calls answered 429 `insufficient_quota` (final: retrying cannot help).
    #[arg(long = "sim-quota-rate", env = "HNC_SIM_QUOTA_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub quota: f64,

    /// Every this many seconds, a burst of 429 `rate_limit_exceeded` for every call (0 = never).
    #[arg(
        long = "sim-burst-every-s",
        env = "HNC_SIM_BURST_EVERY_S",
        default_value_t = 0.0
    )]
    pub burst_every_s: f64,

    /// Length of each 429 burst, in milliseconds.
    #[arg(long = "sim-burst-ms", env = "HNC_SIM_BURST_MS", default_value_t = 200)]
    pub burst_ms: u64,
}

fn parse_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{value:?} is not a probability from 0 to 1")),
    }
}

/// What happens to one call after it passed the rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    ServerError(u16),
    Hang,
    Garbage,
    Refusal,
}

impl Fault {
    /// Its name in the simulator's stats.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ServerError(_) => "server_error",
            Self::Hang => "hang",
            Self::Garbage => "garbage",
            Self::Refusal => "refusal",
        }
    }
}

impl FaultConfig {
    pub fn draw(&self, rng: &mut impl Rng) -> Fault {
        let x: f64 = rng.random();
        let mut edge = self.server_error;
        if x < edge {
            return Fault::ServerError([500, 502, 503][rng.random_range(0..3)]);
        }
        for (rate, fault) in [
            (self.hang, Fault::Hang),
            (self.garbage, Fault::Garbage),
            (self.refusal, Fault::Refusal),
        ] {
            edge += rate;
            if x < edge {
                return fault;
            }
        }
        Fault::None
    }

    pub fn draw_quota(&self, rng: &mut impl Rng) -> bool {
        self.quota > 0.0 && rng.random::<f64>() < self.quota
    }

    /// Inside a 429 burst `since_start` into the run: how long the burst still lasts.
    pub fn burst_left(&self, since_start: Duration) -> Option<Duration> {
        if self.burst_every_s <= 0.0 {
            return None;
        }
        let period = self.burst_every_s * 1000.0;
        let phase_ms = (since_start.as_secs_f64() * 1000.0) % period;
        let left = self.burst_ms as f64 - phase_ms;
        (left > 0.0).then(|| Duration::from_secs_f64(left / 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn draws_each_fault_at_about_its_rate() {
        let config = FaultConfig {
            server_error: 0.1,
            hang: 0.01,
            garbage: 0.02,
            refusal: 0.01,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        let draws: Vec<Fault> = (0..100_000).map(|_| config.draw(&mut rng)).collect();
        let share =
            |f: fn(&Fault) -> bool| draws.iter().filter(|d| f(d)).count() as f64 / 100_000.0;
        assert!((share(|f| matches!(f, Fault::ServerError(_))) - 0.1).abs() < 0.005);
        assert!((share(|f| *f == Fault::Hang) - 0.01).abs() < 0.002);
        assert!((share(|f| *f == Fault::Garbage) - 0.02).abs() < 0.003);
        assert!((share(|f| *f == Fault::None) - 0.86).abs() < 0.01);
    }

    #[test]
    fn bursts_repeat_at_the_start_of_each_period() {
        let config = FaultConfig {
            burst_every_s: 2.0,
            burst_ms: 300,
            ..Default::default()
        };
        assert_eq!(
            config.burst_left(Duration::from_millis(100)),
            Some(Duration::from_millis(200))
        );
        assert_eq!(config.burst_left(Duration::from_millis(500)), None);
        assert!(config.burst_left(Duration::from_millis(2050)).is_some());
    }

    #[test]
    fn rates_must_be_probabilities() {
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("x").is_err());
        assert_eq!(parse_rate("0.25"), Ok(0.25));
    }
}
