//! What the simulator saw, for tests and for people: requests by status, calls in flight now and
//! at most, calls the client abandoned before the answer, and calls per title.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

#[derive(Debug, Default)]
pub struct SimStats {
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    cancelled: AtomicU64,
    batches_created: AtomicU64,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// When the first call arrived, and when the last call answered 2xx had arrived: the
    /// window over which the rate limit was ridden.
    first_arrival: Option<Instant>,
    last_ok_arrival: Option<Instant>,
    by_status: BTreeMap<u16, u64>,
    faults: BTreeMap<&'static str, u64>,
    per_title: HashMap<String, u64>,
}

/// A JSON snapshot, served at `GET /_sim/stats`.
#[derive(Debug, Serialize)]
pub struct StatsSnapshot {
    pub requests_total: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Injected faults and rate-limit answers by kind (`server_error`, `hang`, `garbage`,
    /// `refusal`, `insufficient_quota`, `burst_429`, `rate_limited`).
    pub faults: BTreeMap<&'static str, u64>,
    pub in_flight: u64,
    pub max_in_flight: u64,
    pub cancelled: u64,
    /// Batch API batches created (`POST /v1/batches`), refused ones included.
    pub batches_created: u64,
    pub distinct_titles: usize,
    pub max_calls_per_title: u64,
    /// Seconds from the first call's arrival to the arrival of the last call answered 2xx:
    /// 2xx answers over this window is the rate the clients rode.
    pub ok_window_s: f64,
    /// Present only when asked for (`?titles=true`): large on a long run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_title: Option<HashMap<String, u64>>,
}

impl SimStats {
    /// Marks a call as started; the guard ends it, as cancelled unless `finish` was called.
    pub fn begin(&self) -> CallGuard<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let arrived = Instant::now();
        self.counts
            .lock()
            .expect("stats lock poisoned")
            .first_arrival
            .get_or_insert(arrived);
        CallGuard {
            stats: self,
            finished: false,
            arrived,
        }
    }

    /// Counts a call for its title; returns how many calls that title has had, this one included.
    pub fn count_title(&self, title: &str) -> u64 {
        let mut counts = self.counts.lock().expect("stats lock poisoned");
        let n = counts.per_title.entry(title.to_owned()).or_default();
        *n += 1;
        *n
    }

    pub fn count_batch_created(&self) {
        self.batches_created.fetch_add(1, Ordering::SeqCst);
    }

    pub fn count_fault(&self, kind: &'static str) {
        let mut counts = self.counts.lock().expect("stats lock poisoned");
        *counts.faults.entry(kind).or_default() += 1;
    }

    pub fn snapshot(&self, with_titles: bool) -> StatsSnapshot {
        let counts = self.counts.lock().expect("stats lock poisoned");
        StatsSnapshot {
            requests_total: counts.by_status.values().sum(),
            by_status: counts.by_status.clone(),
            faults: counts.faults.clone(),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            max_in_flight: self.max_in_flight.load(Ordering::SeqCst),
            cancelled: self.cancelled.load(Ordering::SeqCst),
            batches_created: self.batches_created.load(Ordering::SeqCst),
            distinct_titles: counts.per_title.len(),
            max_calls_per_title: counts.per_title.values().copied().max().unwrap_or(0),
            ok_window_s: match (counts.first_arrival, counts.last_ok_arrival) {
                (Some(first), Some(last)) => (last - first).as_secs_f64(),
                _ => 0.0,
            },
            per_title: with_titles.then(|| counts.per_title.clone()),
        }
    }
}

pub struct CallGuard<'s> {
    stats: &'s SimStats,
    finished: bool,
    arrived: Instant,
}

impl CallGuard<'_> {
    pub fn finish(mut self, status: u16) {
        self.finished = true;
        let mut counts = self.stats.counts.lock().expect("stats lock poisoned");
        *counts.by_status.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            let last = counts.last_ok_arrival.get_or_insert(self.arrived);
            *last = (*last).max(self.arrived);
        }
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}
