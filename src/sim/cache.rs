//! OpenAI's prompt cache as the simulator models it: a request whose prefix (everything before
//! the title, for the same model) was served in the last ten minutes is billed its first 1,024
//! tokens or more, in steps of 128, at the cached price. Only served calls fill it (a call
//! refused with a 429, or a batch line not yet run, does not). Not modelled: OpenAI also routes
//! traffic above about 15 requests a minute per prefix and key to machines without the cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an unused prefix stays cached (OpenAI: 5 to 10 minutes idle).
const IDLE: Duration = Duration::from_secs(600);
/// The shortest prefix OpenAI caches, and the steps cached tokens come in.
const CACHEABLE: u64 = 1024;
const STEP: u64 = 128;
/// Prefixes remembered before the stale ones are dropped.
const MAX_PREFIXES: usize = 4096;

#[derive(Debug, Default)]
pub struct PromptCache {
    served: Mutex<HashMap<u64, Instant>>,
}

impl PromptCache {
    /// The cached tokens of a call whose prefix (`digest`) is `tokens` long, served now; the
    /// prefix is then cached.
    pub fn serve(&self, digest: u64, tokens: u64) -> u64 {
        if tokens < CACHEABLE {
            return 0;
        }
        let now = Instant::now();
        let mut served = self.served.lock().expect("never poisoned");
        let hit = served
            .get(&digest)
            .is_some_and(|last| now.duration_since(*last) < IDLE);
        if served.len() >= MAX_PREFIXES {
            served.retain(|_, last| now.duration_since(*last) < IDLE);
        }
        served.insert(digest, now);
        if hit { tokens / STEP * STEP } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_cached_once_served_if_long_enough_in_steps_of_128() {
        let cache = PromptCache::default();
        assert_eq!(cache.serve(1, 1300), 0, "first seen");
        assert_eq!(cache.serve(1, 1300), 1280);
        assert_eq!(cache.serve(2, 1300), 0, "another prefix");
        assert_eq!(cache.serve(3, 1000), 0);
        assert_eq!(cache.serve(3, 1000), 0, "under 1,024 tokens, never");
    }
}
