//! Who may spend the provider's credits: bearer tokens from `HNC_API_KEYS` (or a mounted file),
//! compared in constant time, and per-key quotas of items per minute. A key is never logged or
//! used as a label; its identity is `key-` and the first 8 hex digits of its SHA-256.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::coord::SharedQuota;
use crate::secret::Secret;

/// A caller's public identity, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Everyone, when no keys are configured.
    pub(super) fn anonymous() -> Self {
        Self(Arc::from("anonymous"))
    }

    fn of(key: &Secret) -> Self {
        let digest = Sha256::digest(key.expose().as_bytes());
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Self(Arc::from(format!("key-{hex}")))
    }
}

/// The accepted bearer tokens; empty means the service is open.
#[derive(Debug, Default)]
pub struct ClientKeys {
    keys: Vec<(Secret, ClientId)>,
}

impl ClientKeys {
    pub fn new(keys: Vec<Secret>) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|k| (ClientId::of(&k), k))
                .map(|(id, k)| (k, id))
                .collect(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The identity of `token`, comparing against every key in constant time and without
    /// stopping at a match, so timing says nothing about which prefix or which key was close.
    pub(super) fn identify(&self, token: &[u8]) -> Option<ClientId> {
        let mut found = None;
        for (key, id) in &self.keys {
            if bool::from(key.expose().as_bytes().ct_eq(token)) {
                found = Some(id.clone());
            }
        }
        found
    }
}

/// Items per minute per client, shared by every request of the process, and by every replica
/// when Redis is set (the in-process limiter decides while Redis is unavailable).
#[derive(Debug)]
pub struct Quotas {
    limiter: Option<(NonZeroU32, DefaultKeyedRateLimiter<ClientId>)>,
    shared: Option<SharedQuota>,
}

impl Quotas {
    /// `per_minute` items a minute for each client (a full minute's worth may come at once).
    pub fn new(per_minute: Option<NonZeroU32>) -> Self {
        Self {
            limiter: per_minute
                .map(|n| (n, RateLimiter::keyed(Quota::per_minute(n).allow_burst(n)))),
            shared: None,
        }
    }

    /// The same quotas, counted across every replica through Redis.
    pub fn shared(self, shared: SharedQuota) -> Self {
        Self {
            shared: Some(shared),
            ..self
        }
    }

    /// Takes `items` from `client`'s quota, or says when to come back.
    pub async fn take(&self, client: &ClientId, items: usize) -> Result<(), ApiError> {
        let Some((per_minute, limiter)) = &self.limiter else {
            return Ok(());
        };
        let n =
            NonZeroU32::new(u32::try_from(items).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        if let Some(shared) = &self.shared
            && n <= *per_minute
            && let Some(taken) = shared
                .take(client.as_str(), n.get(), per_minute.get())
                .await
        {
            return taken.map_err(|retry_after| ApiError::QuotaExceeded { retry_after });
        }
        match limiter.check_key_n(client, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(ApiError::QuotaExceeded {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }),
            // More items than a whole minute's quota: this batch can never pass as it is.
            Err(_) => Err(ApiError::QuotaExceeded {
                retry_after: Duration::from_secs(60),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_each_key_and_nothing_else() {
        let keys = ClientKeys::new(vec![Secret::new("alpha-token"), Secret::new("beta-token")]);
        let alpha = keys.identify(b"alpha-token").unwrap();
        assert!(alpha.as_str().starts_with("key-") && alpha.as_str().len() == 12);
        assert_ne!(Some(alpha), keys.identify(b"beta-token"));
        assert_eq!(keys.identify(b"alpha-toke"), None);
        assert_eq!(keys.identify(b""), None);
        assert!(
            !keys
                .identify(b"beta-token")
                .unwrap()
                .as_str()
                .contains("beta")
        );
    }

    #[tokio::test]
    async fn quotas_refuse_past_the_per_minute_budget_and_say_when_to_return() {
        let quotas = Quotas::new(NonZeroU32::new(100));
        let client = ClientId::anonymous();
        quotas.take(&client, 60).await.unwrap();
        quotas.take(&client, 40).await.unwrap();
        let Err(ApiError::QuotaExceeded { retry_after }) = quotas.take(&client, 10).await else {
            panic!("over quota")
        };
        assert!(
            retry_after > Duration::from_secs(5) && retry_after <= Duration::from_secs(7),
            "{retry_after:?}"
        );
        assert!(Quotas::new(None).take(&client, 1_000_000).await.is_ok());
    }
}
