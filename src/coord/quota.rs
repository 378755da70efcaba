//! Items per minute per client across every replica: GCRA with a burst of a whole minute's
//! worth, the same rule as the in-process quota (`governor`), run as one script on Redis's clock.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::store::{Coordinator, RedisOp};

/// `KEYS[1]`: the client's theoretical arrival time, in µs. ARGV: items, items per minute.
/// Returns 0 when taken, else the µs until they would be.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local items = tonumber(ARGV[1])
local per_minute = tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or 0, now)
local new_tat = tat + items * 60000000 / per_minute
local allowed_at = new_tat - 60000000
if allowed_at > now then
  return math.ceil(allowed_at - now)
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
";

/// Every replica's quotas, in Redis.
#[derive(Debug, Clone)]
pub struct SharedQuota {
    coordinator: Arc<Coordinator>,
}

impl SharedQuota {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }

    /// Takes `items` of `per_minute` from `client`'s quota: `Ok` when taken, `Err` with the wait
    /// until they would be; `None` when Redis is unavailable (the replica decides alone).
    pub async fn take(
        &self,
        client: &str,
        items: u32,
        per_minute: u32,
    ) -> Option<Result<(), Duration>> {
        static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(TAKE));
        let key = self.coordinator.key(&["quota", client]);
        let wait_us: i64 = self
            .coordinator
            .run(RedisOp::QuotaTake, |mut connection| async move {
                SCRIPT
                    .key(key)
                    .arg(items)
                    .arg(per_minute)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Some(match u64::try_from(wait_us) {
            Ok(0) | Err(_) => Ok(()),
            Ok(us) => Err(Duration::from_micros(us)),
        })
    }
}
