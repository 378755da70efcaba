//! The deadline picks the lane: the cheapest way to classify a job's titles that still finishes
//! before its deadline, with a margin. OpenAI sells the same answer at three prices: the Batch
//! API (half price, within its 24 h window), the flex tier (the Batch price on live calls, slower
//! and refused when capacity is short, only some models) and the standard live tier. A plan is
//! made once, when the job is submitted (and shown before anything is spent, with `dry_run`);
//! the runner then follows it, and moves work to a faster lane when time runs short.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::rfc3339;
use crate::upstream::Tier;
use crate::upstream::pricing::Price;

/// How a job's titles are classified.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// The standard tier, at background priority until the deadline needs the full budget.
    Live,
    /// The flex tier on live calls: the Batch price, slower.
    Flex,
    /// The provider's Batch API: half price, within its completion window.
    Batch,
}

impl Lane {
    pub fn name(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Flex => "flex",
            Self::Batch => "batch",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Live, Self::Flex, Self::Batch]
            .into_iter()
            .find(|l| l.name() == name)
    }

    /// The tier its calls are billed at.
    pub fn tier(self) -> Tier {
        match self {
            Self::Live => Tier::Standard,
            Self::Flex => Tier::Flex,
            Self::Batch => Tier::Batch,
        }
    }
}

/// Live calls take this much longer than the budget's pace alone says (retries, the tail of a
/// round, other traffic): with the margin, what "can be met live" means, and what the runner
/// keeps in hand before it moves work to live.
pub const LIVE_FACTOR: f64 = 1.25;
/// Flex calls are slower and may be refused for capacity: a flex plan needs this many times
/// the live duration before the deadline, plus the margin.
pub const FLEX_FACTOR: f64 = 3.0;

/// The planner's settings.
#[derive(Debug, Clone, Copy)]
pub struct Lanes {
    /// How long a batch is expected to take on the Batch API (`HNC_BATCH_WINDOW_S`).
    pub batch_window: Duration,
    /// What every lane keeps in hand before a deadline (`HNC_DEADLINE_MARGIN_S`).
    pub margin: Duration,
    /// How often a batch is looked at (`HNC_BATCH_POLL_S`).
    pub poll: Duration,
}
/// The request rate assumed while no limit is configured or announced yet: OpenAI's lowest
/// paid tier for its small models.
pub const ASSUMED_RPM: f64 = 500.0;
/// OpenAI's limit on the requests of one batch input file: a job with more calls does not go
/// to the Batch API (one job, one batch).
pub const MAX_BATCH_REQUESTS: u64 = 50_000;
/// OpenAI may take up to ten minutes to cancel a batch: a batch gives way this much earlier
/// (a tenth of the window at most, for a short one).
pub const CANCEL_ALLOWANCE: Duration = Duration::from_secs(600);
/// The furthest a deadline may be.
pub const MAX_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);

/// What a job asks for: its titles, the calls they make and the tokens those calls count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    pub titles: u64,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// What the service can offer a job now.
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    /// Calls a second at the whole rate budget: configured or announced, `None` while unknown.
    pub calls_per_s: Option<f64>,
    /// Tokens a second at the whole budget, when a token limit is known.
    pub tokens_per_s: Option<f64>,
    /// The model's list price, when known.
    pub price: Option<Price>,
    /// Whether the model is offered on the flex tier.
    pub flex: bool,
    /// How long a batch takes on the Batch API for this model (its window, or what was
    /// observed); `None` when this service cannot use the Batch API for its endpoint.
    pub batch: Option<Duration>,
    /// Whether `batch` is what this model's batches took of late, not the window.
    pub batch_observed: bool,
    /// What every lane keeps in hand before the deadline.
    pub margin: Duration,
}

/// The lane chosen, what it should cost and when it should be done, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub lane: Lane,
    /// Titles the plan is for.
    #[serde(default)]
    pub titles: u64,
    /// One sentence: why this lane.
    #[schema(
        example = "Batch API: the deadline is 30 h away, more than its 24 h window and the 4 min the titles would take live"
    )]
    pub why: String,
    /// RFC 3339; absent without a deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// RFC 3339: when the lane should be done.
    pub estimated_finish: String,
    /// USD at the lane's price; null when the model's price is not known.
    pub estimated_cost_usd: Option<f64>,
    /// USD the same calls would cost live (standard tier).
    pub live_cost_usd: Option<f64>,
    pub estimated_calls: u64,
    /// Counted in o200k, as the provider bills them.
    pub estimated_input_tokens: u64,
    pub estimated_output_tokens: u64,
    /// Seconds the titles take live at the whole rate budget.
    pub live_seconds: f64,
}

/// A deadline nothing can meet: the earliest that could be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable {
    pub earliest_ms: i64,
}

impl Offer {
    /// How long `demand` takes live at the whole budget (the slower of requests and tokens),
    /// and whether the rate is only assumed.
    pub fn live_time(&self, demand: &Demand) -> (Duration, bool) {
        let by_calls = demand.calls as f64 / self.calls_per_s.unwrap_or(ASSUMED_RPM / 60.0);
        let by_tokens = self.tokens_per_s.map_or(0.0, |tps| {
            (demand.input_tokens + demand.output_tokens) as f64 / tps.max(1e-3)
        });
        (
            Duration::from_secs_f64(by_calls.max(by_tokens)),
            self.calls_per_s.is_none(),
        )
    }
}

/// What the `pending` titles left of a job ask for: calls in packs of `pack`, tokens in the
/// plan's proportion (none without a plan).
pub fn rest(plan: Option<&Plan>, pending: u64, pack: usize) -> Demand {
    let share = |tokens: u64| {
        plan.filter(|p| p.titles > 0).map_or(0, |p| {
            (tokens as f64 * pending as f64 / p.titles as f64).ceil() as u64
        })
    };
    Demand {
        titles: pending,
        calls: pending.div_ceil(pack.max(1) as u64),
        input_tokens: share(plan.map_or(0, |p| p.estimated_input_tokens)),
        output_tokens: share(plan.map_or(0, |p| p.estimated_output_tokens)),
    }
}

impl Offer {
    /// Time `live` needs with its factor and the margin: what "meets the deadline live"
    /// requires.
    pub fn live_needs(&self, live: Duration) -> Duration {
        live.mul_f64(LIVE_FACTOR) + self.margin
    }

    /// How long before the deadline a batch must be asked to stop, beyond the time the rest
    /// needs live: the margin and the provider's time to cancel.
    pub fn cancel_allowance(&self) -> Duration {
        let window = self.batch.unwrap_or(CANCEL_ALLOWANCE * 10);
        self.margin + CANCEL_ALLOWANCE.min(window / 10)
    }
}

/// The cheapest lane that meets `deadline_ms` with its margin; without a deadline, live.
pub fn plan(
    demand: &Demand,
    offer: &Offer,
    now_ms: i64,
    deadline_ms: Option<i64>,
) -> Result<Plan, Unreachable> {
    let (live, assumed) = offer.live_time(demand);
    let live_needs = offer.live_needs(live);
    let margin = offer.margin;
    let at = |d: Duration| now_ms + d.as_millis() as i64;
    let cost = |lane: Lane| {
        offer.price.map(|p| {
            p.at(lane.tier()).cost(&crate::upstream::Usage::billed(
                demand.input_tokens,
                0,
                demand.output_tokens,
            ))
        })
    };
    let rate = if assumed {
        format!(" (no rate limit known yet: {ASSUMED_RPM:.0} requests a minute assumed)")
    } else {
        String::new()
    };
    let made = |lane: Lane, finish: Duration, why: String| Plan {
        lane,
        titles: demand.titles,
        why,
        deadline: deadline_ms.map(rfc3339),
        estimated_finish: rfc3339(at(finish)),
        estimated_cost_usd: cost(lane),
        live_cost_usd: cost(Lane::Live),
        estimated_calls: demand.calls,
        estimated_input_tokens: demand.input_tokens,
        estimated_output_tokens: demand.output_tokens,
        live_seconds: live.as_secs_f64(),
    };
    let Some(deadline_ms) = deadline_ms else {
        return Ok(made(
            Lane::Live,
            live_needs,
            format!("live: no deadline, at background priority{rate}"),
        ));
    };
    let left = Duration::from_millis(u64::try_from(deadline_ms - now_ms).unwrap_or(0));
    // A rate only assumed is no ground to refuse: the plan goes live and says so.
    if left < live_needs && !assumed {
        return Err(Unreachable {
            earliest_ms: at(live_needs),
        });
    }
    let took = |d: Duration| human(d);
    if let Some(window) = offer.batch
        && demand.calls <= MAX_BATCH_REQUESTS
        && left >= window + live_needs + offer.cancel_allowance()
    {
        return Ok(made(
            Lane::Batch,
            window,
            format!(
                "Batch API: the deadline is {} away, more than its {} turnaround{} and the {} the titles would take live{rate}",
                took(left),
                took(window),
                if offer.batch_observed {
                    " (observed)"
                } else {
                    ""
                },
                took(live),
            ),
        ));
    }
    let flex_needs = live.mul_f64(FLEX_FACTOR) + margin;
    if offer.flex && left >= flex_needs {
        return Ok(made(
            Lane::Flex,
            live.mul_f64(FLEX_FACTOR),
            format!(
                "flex: the deadline is {} away, room for flex's slower calls ({} at {FLEX_FACTOR:.0}x live){}{rate}",
                took(left),
                took(live.mul_f64(FLEX_FACTOR)),
                batch_aside(offer, demand, left, live_needs + offer.cancel_allowance()),
            ),
        ));
    }
    Ok(made(
        Lane::Live,
        live_needs,
        format!(
            "live: the deadline is {} away and the titles take {} live{}{rate}",
            took(left),
            took(live),
            if offer.flex {
                ", too close for flex"
            } else {
                ", and the model has no flex tier"
            },
        ),
    ))
}

/// Why the Batch API was passed over, for a flex plan's sentence.
fn batch_aside(offer: &Offer, demand: &Demand, left: Duration, reserve: Duration) -> String {
    match offer.batch {
        Some(_) if demand.calls > MAX_BATCH_REQUESTS => {
            format!(", more calls than one batch takes ({MAX_BATCH_REQUESTS})")
        }
        Some(window) if left < window + reserve => {
            format!(", too close for the Batch API's {}", human(window))
        }
        _ => String::new(),
    }
}

/// `90 s`, `12 min`, `30 h`: a duration as a sentence says it.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.0} h", s / 3600.0)
    }
}

/// A `deadline` in RFC 3339 (`2026-12-07T18:00:00Z`, or with an offset such as `+02:00`), as
/// milliseconds since the epoch.
pub fn parse_deadline(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time (e.g. \"2026-12-07T18:00:00Z\")");
    let t = text.trim();
    let (base, offset_s) = match t.strip_suffix(['Z', 'z']) {
        Some(base) => (base, 0),
        None if t.len() > 6 && t.is_char_boundary(t.len() - 6) => {
            let (base, offset) = t.split_at(t.len() - 6);
            let sign = match offset.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let (h, m) = offset_parts(&offset[1..]).ok_or_else(bad)?;
            (base, sign * (h * 3600 + m * 60))
        }
        None => return Err(bad()),
    };
    let at = humantime::parse_rfc3339_weak(&format!("{base}Z")).map_err(|_| bad())?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_millis() as i64;
    Ok(ms - offset_s * 1000)
}

/// `HH:MM` of an offset: two digits each, hours to 23, minutes to 59.
fn offset_parts(text: &str) -> Option<(i64, i64)> {
    let (h, m) = text.split_once(':')?;
    let two = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    let (h, m) = (two(h)?, two(m)?);
    (h <= 23 && m <= 59).then_some((h, m))
}

/// `complete_within` as `"90m"`, `"30h"`, `"2h 30m"` (humantime's forms).
pub fn parse_within(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. \"90m\", \"30h\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn demand(titles: u64) -> Demand {
        Demand {
            titles,
            calls: titles,
            input_tokens: titles * 150,
            output_tokens: titles * 15,
        }
    }

    /// 600 requests a minute (10 a second), gpt-5.4-nano's price, flex, a 24 h Batch window.
    fn offer() -> Offer {
        Offer {
            calls_per_s: Some(10.0),
            tokens_per_s: None,
            price: Some(Price::list(0.20, 0.02, 1.25)),
            flex: true,
            batch: Some(Duration::from_secs(24 * 3600)),
            batch_observed: false,
            margin: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_deadline_30_hours_away_goes_to_the_batch_api_at_half_the_live_price() {
        let p = plan(&demand(6000), &offer(), 0, Some(30 * HOUR)).unwrap();
        assert_eq!(p.lane, Lane::Batch, "{}", p.why);
        let (batch, live) = (p.estimated_cost_usd.unwrap(), p.live_cost_usd.unwrap());
        assert!((batch / live - 0.5).abs() < 1e-9, "{batch} vs {live}");
        assert!(
            p.why.starts_with("Batch API: the deadline is 30 h away"),
            "{}",
            p.why
        );
        assert_eq!(p.estimated_finish, rfc3339(24 * HOUR));
    }

    #[test]
    fn three_hours_goes_to_flex_ten_minutes_live_and_too_soon_is_refused_with_the_earliest() {
        let flex = plan(&demand(6000), &offer(), 0, Some(3 * HOUR)).unwrap();
        assert_eq!(flex.lane, Lane::Flex, "{}", flex.why);
        assert!(
            flex.why.contains("too close for the Batch API"),
            "{}",
            flex.why
        );
        // 6,000 calls at 10 a second: 600 s live, 810 s with the factor and slack.
        let live = plan(&demand(6000), &offer(), 0, Some(HOUR / 6 * 2)).unwrap();
        assert_eq!(live.lane, Lane::Live, "{}", live.why);
        assert_eq!(live.estimated_cost_usd, live.live_cost_usd);
        let refused = plan(&demand(6000), &offer(), 0, Some(HOUR / 6)).unwrap_err();
        assert_eq!(refused.earliest_ms, 810_000);
    }

    #[test]
    fn without_flex_or_batch_the_plan_is_live_and_says_why() {
        let mut o = offer();
        o.flex = false;
        o.batch = None;
        let p = plan(&demand(100), &o, 0, Some(30 * HOUR)).unwrap();
        assert_eq!(p.lane, Lane::Live);
        assert!(p.why.contains("no flex tier"), "{}", p.why);
        let none = plan(&demand(100), &o, 0, None).unwrap();
        assert_eq!((none.lane, none.deadline.as_deref()), (Lane::Live, None));
    }

    #[test]
    fn a_token_limit_slows_the_live_estimate_and_an_unknown_rate_is_assumed_and_said() {
        let mut o = offer();
        o.tokens_per_s = Some(165.0); // 6,000 x 165 tokens: 6,000 s
        let (live, assumed) = o.live_time(&demand(6000));
        assert_eq!((live.as_secs(), assumed), (6000, false));
        o.calls_per_s = None;
        let p = plan(&demand(60), &o, 0, None).unwrap();
        assert!(p.why.contains("500 requests a minute assumed"), "{}", p.why);
        // An assumed rate is no ground to refuse: too soon goes live, and says why.
        let soon = plan(&demand(6000), &o, 0, Some(1000)).unwrap();
        assert_eq!(soon.lane, Lane::Live, "{}", soon.why);
    }

    #[test]
    fn a_deadline_reads_utc_and_offsets() {
        let utc = parse_deadline("2026-12-07T18:00:00Z").unwrap();
        assert_eq!(parse_deadline("2026-12-07T20:00:00+02:00").unwrap(), utc);
        assert_eq!(parse_deadline("2026-12-07T13:00:00-05:00").unwrap(), utc);
        assert_eq!(rfc3339(utc), "2026-12-07T18:00:00.000Z");
        assert!(parse_deadline("tomorrow").is_err());
        assert!(parse_deadline("2026-12-07T18:00:00").is_err());
        assert!(parse_deadline("2026-12-07T18:00:00+99:99").is_err());
        assert!(parse_deadline("2026-12-07T18:00:00+-5:00").is_err());
    }

    #[test]
    fn complete_within_reads_minutes_and_hours() {
        assert_eq!(parse_within("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_within("30h").unwrap(), Duration::from_secs(108_000));
        assert!(parse_within("soon").is_err());
    }
}
