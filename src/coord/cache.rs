//! The second level of the result cache: answers any replica got, kept in Redis for the cache's
//! TTL under a hash of the cache key (model, taxonomy name and version, title), so a title's text
//! is never a key name and keys stay short.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use super::store::{Coordinator, RedisOp};

/// Bump when the stored value's shape changes, so replicas of two versions never misread it.
const FORMAT: &str = "v1";

#[derive(Debug, Clone)]
pub struct SharedCache {
    coordinator: Arc<Coordinator>,
    ttl: Duration,
}

impl SharedCache {
    pub fn new(coordinator: Arc<Coordinator>, ttl: Duration) -> Self {
        Self { coordinator, ttl }
    }

    /// The Redis key for a cache key made of `parts`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut hash = Sha256::new();
        for part in parts {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.coordinator.key(&["cache", FORMAT, &hex])
    }

    /// The stored values of `keys`, in order, in one round trip; all `None` when Redis is
    /// unavailable.
    pub async fn get_many(&self, keys: Vec<String>) -> Vec<Option<String>> {
        let n = keys.len();
        if n == 0 {
            return Vec::new();
        }
        self.coordinator
            .run(RedisOp::CacheGet, |mut connection| async move {
                connection.mget::<_, Vec<Option<String>>>(keys).await
            })
            .await
            .filter(|values| values.len() == n)
            .unwrap_or_else(|| vec![None; n])
    }

    /// Stores `value` under `key` for the TTL. A failure only costs a later miss.
    pub async fn put(&self, key: String, value: String) {
        let ttl = self.ttl.as_secs().max(1);
        self.coordinator
            .run(RedisOp::CachePut, |mut connection| async move {
                connection.set_ex::<_, _, ()>(key, value, ttl).await
            })
            .await;
    }
}
