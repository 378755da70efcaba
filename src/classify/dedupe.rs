//! Paying once per distinct question. Identical titles in flight at the same time, in one batch
//! or across batches, share one upstream call (single-flight); an optional bounded cache (moka:
//! TTL and LRU-like eviction) answers repeats without a call. Keys hold the model, the taxonomy's
//! name and version, and the title exactly as it is sent, so an answer is never reused for
//! another model or taxonomy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::upstream::{Failure, Prediction, UpstreamClient, Usage};

/// Cache settings; `None` in `Dedupe::new` means no cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub max_entries: u64,
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CallKey {
    model: Arc<str>,
    taxonomy: Arc<str>,
    title: Box<str>,
}

/// One call's answer, cheap to hand to every item that asked the same question.
type Outcome = Result<Prediction, Arc<Failure>>;

/// Where an item's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This item's own upstream call (its usage is counted here).
    Upstream,
    /// Another item's call for the same title, in flight at the same time (0 tokens).
    Shared,
    /// The result cache (0 tokens).
    Cache,
}

#[derive(Debug)]
pub struct Answer {
    pub result: Outcome,
    pub usage: Usage,
    pub source: Source,
}

#[derive(Debug)]
pub struct Dedupe {
    upstream: Arc<UpstreamClient>,
    model: Arc<str>,
    taxonomy: Arc<str>,
    /// Per key in flight: the items waiting for the leader's answer.
    waiting: Mutex<HashMap<CallKey, Vec<oneshot::Sender<Outcome>>>>,
    cache: Option<moka::future::Cache<CallKey, Prediction>>,
}

impl Dedupe {
    pub fn new(upstream: Arc<UpstreamClient>, cache: Option<CacheSettings>) -> Self {
        let taxonomy = upstream.taxonomy();
        Self {
            model: Arc::from(upstream.model()),
            taxonomy: Arc::from(format!("{}@{}", taxonomy.name(), taxonomy.version())),
            upstream,
            waiting: Mutex::default(),
            cache: cache.map(|c| {
                moka::future::Cache::builder()
                    .max_capacity(c.max_entries)
                    .time_to_live(c.ttl)
                    .build()
            }),
        }
    }

    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    /// The answer for `title` (already trimmed): from the cache, from a call already in flight
    /// for the same title, or from a call of its own.
    pub async fn classify(&self, title: &str) -> Answer {
        let key = CallKey {
            model: self.model.clone(),
            taxonomy: self.taxonomy.clone(),
            title: title.into(),
        };
        if let Some(prediction) = self.cached(&key).await {
            return Answer {
                result: Ok(prediction),
                usage: Usage::default(),
                source: Source::Cache,
            };
        }
        loop {
            match self.join(&key) {
                Role::Follower(answer) => match answer.await {
                    Ok(result) => {
                        return Answer {
                            result,
                            usage: Usage::default(),
                            source: Source::Shared,
                        };
                    }
                    // The leader went away (its client disconnected): ask again, maybe as leader.
                    Err(_) => continue,
                },
                Role::Leader(flight) => {
                    let (result, usage) = self.upstream.classify(title).await;
                    let result = result.map_err(Arc::new);
                    if let (Some(cache), Ok(prediction)) = (&self.cache, &result) {
                        cache.insert(key.clone(), prediction.clone()).await;
                    }
                    flight.land(&result);
                    return Answer {
                        result,
                        usage,
                        source: Source::Upstream,
                    };
                }
            }
        }
    }

    async fn cached(&self, key: &CallKey) -> Option<Prediction> {
        self.cache.as_ref()?.get(key).await
    }

    /// Leads the call for `key`, or follows the one in flight.
    fn join(&self, key: &CallKey) -> Role<'_> {
        let mut waiting = self.waiting.lock().expect("single-flight lock poisoned");
        if let Some(followers) = waiting.get_mut(key) {
            let (tx, rx) = oneshot::channel();
            followers.push(tx);
            return Role::Follower(rx);
        }
        waiting.insert(key.clone(), Vec::new());
        Role::Leader(Flight {
            dedupe: self,
            key: key.clone(),
        })
    }
}

enum Role<'d> {
    Leader(Flight<'d>),
    Follower(oneshot::Receiver<Outcome>),
}

/// The leader's registration. Landing hands the answer to every follower; dropping it unlanded
/// (the leader was cancelled) releases them to try again.
struct Flight<'d> {
    dedupe: &'d Dedupe,
    key: CallKey,
}

impl Flight<'_> {
    fn land(self, result: &Outcome) {
        for follower in self.take_followers() {
            let _ = follower.send(result.clone());
        }
    }

    fn take_followers(&self) -> Vec<oneshot::Sender<Outcome>> {
        let mut waiting = self
            .dedupe
            .waiting
            .lock()
            .expect("single-flight lock poisoned");
        waiting.remove(&self.key).unwrap_or_default()
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        // After `land` the entry is gone and this finds nothing; after a cancellation it drops
        // the followers' senders, which wakes them to retry.
        drop(self.take_followers());
    }
}
