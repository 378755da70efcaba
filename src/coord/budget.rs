//! One provider budget for every replica on the same endpoint: a GCRA (virtual scheduling) over
//! requests and tokens, run as one Lua script with Redis's own clock, so replicas need no
//! synchronised clocks. A replica leases a block of several calls at once (a start and a span
//! that it spreads its calls over), which keeps Redis round trips to a fraction of one per call,
//! and gives back the unused part of its token estimates with its next lease.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};

use super::store::{Coordinator, RedisOp};
use crate::secret::Secret;

/// An idle budget is forgotten after this: its state is only ever "now or later".
const TTL_MS: u64 = 120_000;
/// While no replica knows the limits, one call goes first to learn them from the provider's
/// headers; the others ask again after this.
const PROBE_RETRY: Duration = Duration::from_millis(50);
/// How far ahead of now a background lease may start, and the most of the schedule it may take:
/// the longest an interactive call waits behind job calls booked before it asked.
pub const BACKGROUND_HORIZON: Duration = Duration::from_millis(20);

/// `KEYS[1]`: the endpoint's budget (a hash). ARGV: rpm, tpm (0: not known by this replica),
/// open (1: the provider announces no limits), share of the limits to use, calls, tokens for
/// those calls, tokens given back, TTL in ms, probe window in ms, background (1: a job's calls),
/// background horizon in µs.
/// Returns {delay_us, span_us, calls granted, rpm, tpm}.
///
/// A background lease never books ahead: it is granted only when the budget's next turn is
/// within the horizon of now (nobody else is asking), for at most the horizon's worth of calls,
/// and otherwise answers 0 calls and when the budget frees up. So every replica's job calls
/// take the turns interactive calls leave, and an interactive lease finds at most one
/// horizon of job calls booked ahead of it, whichever replica asks.
const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = redis.call('HMGET', KEYS[1], 'req_tat', 'tok_tat', 'pause_until', 'rpm', 'tpm', 'open')
local req_tat = tonumber(s[1]) or 0
local tok_tat = tonumber(s[2]) or 0
local pause_until = tonumber(s[3]) or 0
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
if rpm > 0 then redis.call('HSET', KEYS[1], 'rpm', rpm) else rpm = tonumber(s[4]) or 0 end
if tpm > 0 then redis.call('HSET', KEYS[1], 'tpm', tpm) else tpm = tonumber(s[5]) or 0 end
local open = s[6] == '1'
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'open', '1'); open = true end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
if rpm == 0 and tpm == 0 and not open then
  if redis.call('SET', KEYS[1] .. ':probe', '1', 'NX', 'PX', ARGV[9]) then
    return {math.max(0, math.floor(pause_until - now)), 0, 1, 0, 0}
  end
  return {0, 0, 0, 0, 0}
end
local share = tonumber(ARGV[4])
local calls = tonumber(ARGV[5])
local tokens = tonumber(ARGV[6])
local refund = tonumber(ARGV[7])
local start = math.max(now, pause_until)
local span = 0
if rpm > 0 then
  start = math.max(start, req_tat)
end
if tpm > 0 then
  tok_tat = math.max(now, tok_tat - refund * 60000000 / (tpm * share))
  start = math.max(start, tok_tat)
end
if ARGV[10] == '1' then
  local horizon = tonumber(ARGV[11])
  if start - now > horizon then
    return {math.floor(start - now), 0, 0, rpm, tpm}
  end
  local asked = calls
  if rpm > 0 then
    calls = math.max(1, math.min(calls, math.floor(horizon * rpm * share / 60000000)))
  end
  if tpm > 0 then
    local per_call = tokens / asked
    calls = math.max(1, math.min(calls, math.floor(horizon * tpm * share / 60000000 / math.max(per_call, 1))))
  end
  tokens = tokens * calls / asked
end
if rpm > 0 then
  span = calls * 60000000 / (rpm * share)
  redis.call('HSET', KEYS[1], 'req_tat', string.format('%.0f', start + span))
end
if tpm > 0 then
  local tok_span = tokens * 60000000 / (tpm * share)
  span = math.max(span, tok_span)
  redis.call('HSET', KEYS[1], 'tok_tat', string.format('%.0f', start + tok_span))
end
return {math.floor(start - now), math.floor(span), calls, rpm, tpm}
";

/// `KEYS[1]`: the budget; ARGV: pause in µs, TTL in ms. Every replica waits until then.
const PAUSE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'pause_until')) or 0
if until_us > current then
  redis.call('HSET', KEYS[1], 'pause_until', string.format('%.0f', until_us))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// What a replica asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeaseRequest {
    /// The limits this replica knows (configured or announced); `None`: not known here.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// The provider answered without announcing any limit: nothing to pace.
    pub open: bool,
    pub share: f64,
    pub calls: u32,
    pub tokens: u64,
    /// Tokens reserved by earlier calls and not used: given back.
    pub refund: u64,
    /// A job's calls: granted only turns nobody else asks for (see `LEASE`).
    pub background: bool,
}

/// What the budget granted: `calls` calls spread over `span` from `delay` after now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    pub delay: Duration,
    pub span: Duration,
    /// 0 when another replica is learning the limits: ask again after `delay`.
    pub calls: u32,
    /// The limits every replica has learned so far.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// The budget of one endpoint, named by a hash of its base URL and key (never the key).
#[derive(Debug, Clone)]
pub struct SharedBudget {
    coordinator: Arc<Coordinator>,
    key: String,
}

impl SharedBudget {
    pub fn new(coordinator: Arc<Coordinator>, base_url: &str, api_key: &Secret) -> Self {
        let mut hash = Sha256::new();
        hash.update(base_url.as_bytes());
        hash.update([0]);
        hash.update(api_key.expose().as_bytes());
        let digest = hash.finalize();
        let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            key: coordinator.key(&["budget", &id]),
            coordinator,
        }
    }

    /// Whether a lease would be asked for now (Redis answered last time, or is due a retry).
    pub fn may_send(&self) -> bool {
        self.coordinator.may_send()
    }

    /// Leases calls from the shared budget; `None`: Redis is unavailable, pace locally.
    pub async fn lease(&self, request: LeaseRequest) -> Option<Lease> {
        static SCRIPT: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new(LEASE));
        let key = self.key.clone();
        let reply: (i64, i64, i64, i64, i64) = self
            .coordinator
            .run(RedisOp::BudgetLease, |mut connection| async move {
                SCRIPT
                    .key(key)
                    .arg(request.rpm.unwrap_or(0))
                    .arg(request.tpm.unwrap_or(0))
                    .arg(u8::from(request.open))
                    .arg(request.share)
                    .arg(request.calls.max(1))
                    .arg(request.tokens)
                    .arg(request.refund)
                    .arg(TTL_MS)
                    .arg(PROBE_RETRY.as_millis() as u64 * 20)
                    .arg(u8::from(request.background))
                    .arg(BACKGROUND_HORIZON.as_micros() as u64)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        let (delay_us, span_us, calls, rpm, tpm) = reply;
        let positive = |n: i64| u64::try_from(n).ok().filter(|n| *n > 0);
        Some(Lease {
            // No limits known yet: another replica is learning them.
            delay: if calls == 0 && rpm <= 0 && tpm <= 0 {
                PROBE_RETRY
            } else {
                Duration::from_micros(positive(delay_us).unwrap_or(0))
            },
            span: Duration::from_micros(positive(span_us).unwrap_or(0)),
            calls: u32::try_from(calls).unwrap_or(0),
            rpm: positive(rpm),
            tpm: positive(tpm),
        })
    }

    /// Pauses every replica for `wait` (a provider 429's `retry-after`), in the background.
    pub fn pause(&self, wait: Duration) {
        static SCRIPT: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new(PAUSE));
        let budget = self.clone();
        crate::tasks::spawn(async move {
            let key = budget.key.clone();
            budget
                .coordinator
                .run(RedisOp::BudgetPause, |mut connection| async move {
                    SCRIPT
                        .key(key)
                        .arg(wait.as_micros() as u64)
                        .arg(TTL_MS)
                        .invoke_async::<i64>(&mut connection)
                        .await
                })
                .await;
        });
    }
}
