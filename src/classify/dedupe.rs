//! Paying once per distinct question. Identical titles in flight at the same time, in one batch
//! or across batches, share one upstream call (single-flight); an optional bounded cache (moka:
//! TTL and LRU-like eviction) answers repeats without a call. Keys hold the model, the kind of
//! confidence, the taxonomy's name and version, and the title exactly as it is sent, so an
//! answer is never reused for another model or taxonomy, nor a written confidence served where
//! one from logprobs is asked for (a lookup asks for the kind a call would ask for now; an
//! answer is kept under the kind it holds). With Redis, a second level behind it holds what every replica
//! got (`coord::SharedCache`): a title any replica answered is a cache hit on all of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::coord::SharedCache;
use crate::taxonomy::Taxonomy;
use crate::upstream::{ConfidenceSource, Failure, Prediction, UpstreamClient, Usage};

/// Cache settings; `None` in `Dedupe::new` means no cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub max_entries: u64,
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CallKey {
    model: Arc<str>,
    source: ConfidenceSource,
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
    /// Per key in flight: the items waiting for the leader's answer.
    waiting: Mutex<HashMap<CallKey, Vec<oneshot::Sender<Outcome>>>>,
    cache: Option<moka::future::Cache<CallKey, Prediction>>,
    /// Only with `cache`: it is the first level.
    shared: Option<SharedCache>,
}

/// What the shared cache stores: the answer, not how it was got.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    confidence: f64,
    source: ConfidenceSource,
}

impl Dedupe {
    pub fn new(upstream: Arc<UpstreamClient>, cache: Option<CacheSettings>) -> Self {
        Self {
            model: Arc::from(upstream.model()),
            upstream,
            waiting: Mutex::default(),
            cache: cache.map(|c| {
                moka::future::Cache::builder()
                    .max_capacity(c.max_entries)
                    .time_to_live(c.ttl)
                    .build()
            }),
            shared: None,
        }
    }

    /// The same, with `shared` behind the in-process cache (when there is one).
    pub fn with_shared(self, shared: SharedCache) -> Self {
        Self {
            shared: self.cache.is_some().then_some(shared),
            ..self
        }
    }

    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    /// The answer for `title` (already trimmed): from the cache, from a call already in flight
    /// for the same title, or from a call of its own.
    pub async fn classify(&self, taxonomy: &Taxonomy, title: &str) -> Answer {
        let key = self.key(taxonomy, title);
        if let Some(prediction) = Box::pin(self.cached(std::slice::from_ref(&key)))
            .await
            .remove(0)
        {
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
                    let (result, usage) = self.upstream.classify(taxonomy, title).await;
                    let result = result.map_err(Arc::new);
                    if let Ok(prediction) = &result {
                        Box::pin(self.remember(key.clone(), prediction)).await;
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

    /// Answers for several titles (already trimmed) with one upstream call for those the cache
    /// does not hold. A title whose packed answer is missing or invalid, or every title when the
    /// packed call fails as a whole, is asked again alone, so packing never loses an item. The
    /// packed call's usage is counted on the first answer it produced.
    pub async fn classify_pack(&self, taxonomy: &Taxonomy, titles: &[&str]) -> Vec<Answer> {
        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(titles.len());
        let mut misses = Vec::new();
        let keys: Vec<CallKey> = titles.iter().map(|t| self.key(taxonomy, t)).collect();
        let cached = Box::pin(self.cached(&keys)).await;
        for ((position, title), cached) in titles.iter().enumerate().zip(cached) {
            match cached {
                Some(prediction) => answers.push(Some(Answer {
                    result: Ok(prediction),
                    usage: Usage::default(),
                    source: Source::Cache,
                })),
                None => {
                    answers.push(None);
                    misses.push((position, *title));
                }
            }
        }
        if misses.is_empty() {
            return answers.into_iter().flatten().collect();
        }
        let miss_titles: Vec<&str> = misses.iter().map(|(_, title)| *title).collect();
        let (result, usage) = self.upstream.classify_pack(taxonomy, &miss_titles).await;
        let mut pack_usage = Some(usage);
        let slots = result.unwrap_or_else(|_| vec![None; misses.len()]);
        let mut alone = Vec::new();
        for ((position, title), slot) in misses.into_iter().zip(slots) {
            match slot {
                Some(prediction) => {
                    Box::pin(self.remember(self.key(taxonomy, title), &prediction)).await;
                    let usage = pack_usage.take().unwrap_or_default();
                    answers[position] = Some(Answer {
                        result: Ok(prediction),
                        usage,
                        source: Source::Upstream,
                    });
                }
                None => alone.push((position, title)),
            }
        }
        let retried = futures::future::join_all(
            alone
                .iter()
                .map(|(_, title)| self.classify(taxonomy, title)),
        )
        .await;
        for ((position, _), mut answer) in alone.into_iter().zip(retried) {
            if let Some(usage) = pack_usage.take() {
                answer.usage += usage;
            }
            answers[position] = Some(answer);
        }
        answers
            .into_iter()
            .map(|a| a.expect("every title is answered from the cache, the pack, or alone"))
            .collect()
    }

    fn key(&self, taxonomy: &Taxonomy, title: &str) -> CallKey {
        CallKey {
            model: self.model.clone(),
            source: self.upstream.asks_for(),
            taxonomy: taxonomy.key().clone(),
            title: title.into(),
        }
    }

    /// Keeps `prediction` under `key`, for the kind of confidence it holds.
    async fn remember(&self, mut key: CallKey, prediction: &Prediction) {
        key.source = prediction.source;
        let key = &key;
        if let Some(cache) = &self.cache {
            cache.insert(key.clone(), prediction.clone()).await;
        }
        if let Some(shared) = &self.shared {
            let stored = Stored {
                topic: std::borrow::Cow::Borrowed(&prediction.topic),
                confidence: prediction.confidence,
                source: prediction.source,
            };
            let value = serde_json::to_string(&stored).expect("a label and a number serialize");
            shared.put(shared_key(shared, key), value).await;
        }
    }

    /// The cached answers for `keys`, in order: the in-process cache first, then, for what it
    /// misses, the shared one in a single round trip (its hits are kept in process too).
    /// Callers box this and `remember`: their futures (the cache's and Redis's) are larger than
    /// the rest of a call's, and each call in flight would otherwise carry room for them.
    async fn cached(&self, keys: &[CallKey]) -> Vec<Option<Prediction>> {
        let Some(cache) = &self.cache else {
            return vec![None; keys.len()];
        };
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(cache.get(key).await);
        }
        let Some(shared) = &self.shared else {
            return found;
        };
        let missing: Vec<usize> = (0..keys.len()).filter(|i| found[*i].is_none()).collect();
        let names = missing
            .iter()
            .map(|i| shared_key(shared, &keys[*i]))
            .collect();
        for (i, value) in missing.into_iter().zip(shared.get_many(names).await) {
            let Some(stored) = value
                .as_deref()
                .and_then(|v| serde_json::from_str::<Stored>(v).ok())
            else {
                continue;
            };
            if stored.source != keys[i].source {
                continue;
            }
            let prediction = Prediction {
                topic: Arc::from(stored.topic.as_ref()),
                confidence: stored.confidence,
                source: stored.source,
            };
            cache.insert(keys[i].clone(), prediction.clone()).await;
            found[i] = Some(prediction);
        }
        found
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

fn shared_key(shared: &SharedCache, key: &CallKey) -> String {
    shared.key(&[&key.model, key.source.name(), &key.taxonomy, &key.title])
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
