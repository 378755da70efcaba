//! Failed openings of an endpoint's connections, and the wait before the next, as gRPC's
//! connection backoff has it: after a failed opening, calls that need a new connection fail at
//! once with its error rather than each trying in turn (a thousand calls on a dead endpoint
//! would otherwise each wait for a connect timeout); the wait grows with each failure in a row
//! (with jitter, up to `MAX_WAIT`); once it is over, one opening at a time probes the endpoint (a
//! circuit breaker's half-open state) while the other calls wait for its outcome
//! (`wait_usable`). A short outage costs its calls waiting, and the endpoint one opening per
//! wait, not a storm of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Notify;

use crate::upstream::error::TransportError;

/// The first wait after a failed opening, grown by `GROWTH` per failure in a row up to `MAX_WAIT`
/// (gRPC's multiplier; its one-second start and two-minute ceiling are for long-lived channels,
/// where here a call has a minute).
const FIRST_WAIT: Duration = Duration::from_millis(100);
const GROWTH: f64 = 1.6;
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Each wait is moved by up to this fraction either way, so replicas do not probe in step.
const JITTER: f64 = 0.2;

#[derive(Debug, Default)]
pub struct Openings {
    /// Whether openings have failed since the last success: read without the lock, so the
    /// checks every call makes (`blocked`, `wait_usable`) cost nothing while the provider is up.
    failing: AtomicBool,
    state: Mutex<State>,
    /// An opening settled (opened or failed): the calls waiting in `wait_usable` look again.
    settled: Notify,
}

#[derive(Debug, Default)]
struct State {
    last: Option<LastFailure>,
    /// The one probe under way while openings are failing, by its number: only its own outcome
    /// ends it (an opening started before the outage that fails meanwhile does not).
    probe: Option<u64>,
    probes: u64,
}

impl State {
    fn probing(&self) -> bool {
        self.probe.is_some()
    }
}

#[derive(Debug)]
struct LastFailure {
    error: Arc<TransportError>,
    until: Instant,
    in_a_row: u32,
    /// When the first failure of this run of failures happened: how long the endpoint has been
    /// unreachable.
    since: Instant,
}

/// What `/healthz` and the metrics say of an endpoint that cannot be reached now.
#[derive(Debug, Clone)]
pub struct Outage {
    pub since: Instant,
    pub last_error: Arc<TransportError>,
}

/// Leave to open a connection, from `Openings::begin`. Dropped without an outcome (the call
/// was cancelled mid-opening), it frees the probe for another call.
#[derive(Debug)]
pub struct Permit<'a> {
    openings: &'a Openings,
    /// This opening's probe number, when it is the probe.
    probe: Option<u64>,
    settled: bool,
}

impl Permit<'_> {
    pub fn succeeded(mut self) {
        self.settled = true;
        self.openings.succeeded();
    }

    /// Records the failure; its error is shared with the calls that waited for it. Only the
    /// probe's failure (or the first of an outage) grows the wait: openings already under way
    /// when the outage began fail together with it.
    pub fn failed(mut self, error: TransportError) -> Arc<TransportError> {
        self.settled = true;
        let error = Arc::new(error);
        self.openings.record(error.clone(), self.probe, None);
        error
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe.is_some() {
            let mut state = self.openings.lock();
            if state.probe == self.probe {
                state.probe = None;
            }
            drop(state);
            self.openings.settled.notify_waiters();
        }
    }
}

impl Openings {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("openings lock poisoned")
    }

    /// The last opening's failure, while the wait after it lasts or while a probe is out.
    pub fn blocked(&self) -> Option<Arc<TransportError>> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        let state = self.lock();
        let last = state.last.as_ref()?;
        (state.probing() || Instant::now() < last.until).then(|| last.error.clone())
    }

    /// Leave to open a connection: always while openings succeed; after failures, only once the
    /// wait is over and only for one opening at a time.
    pub fn begin(&self) -> Result<Permit<'_>, Arc<TransportError>> {
        let mut state = self.lock();
        let probe = match &state.last {
            None => None,
            Some(last) if state.probing() || Instant::now() < last.until => {
                return Err(last.error.clone());
            }
            Some(_) => {
                state.probes += 1;
                Some(state.probes)
            }
        };
        if probe.is_some() {
            state.probe = probe;
        }
        Ok(Permit {
            openings: self,
            probe,
            settled: false,
        })
    }

    /// Records a connection the server turned away before it processed anything on it (GOAWAY
    /// right after its SETTINGS), the `streak`th in a row: as good as a failed opening, with a
    /// wait that grows with the streak (the openings themselves succeeded).
    pub fn turned_away(&self, error: TransportError, streak: u32) {
        self.record(Arc::new(error), None, Some(streak));
    }

    /// A failure: the probe's (`probe`) grows the wait and ends the probe; the first of an
    /// outage starts it; any other (an opening started before the outage) only updates the
    /// error the waiting calls see. `streak` sets the failures in a row outright.
    fn record(&self, error: Arc<TransportError>, probe: Option<u64>, streak: Option<u32>) {
        let now = Instant::now();
        let mut state = self.lock();
        let ends_probe = probe.is_some() && state.probe == probe;
        if ends_probe {
            state.probe = None;
        }
        let (in_a_row, since) = match (state.last.as_mut(), streak) {
            (Some(last), None) if !ends_probe => {
                last.error = error;
                return;
            }
            (Some(last), None) => (last.in_a_row + 1, last.since),
            (Some(last), Some(streak)) => (streak.max(last.in_a_row), last.since),
            (None, streak) => {
                // Said once per outage; its end is said by `succeeded`.
                tracing::warn!(%error, "upstream connections fail to open: calls wait for it within their deadlines");
                (streak.unwrap_or(1), now)
            }
        };
        state.last = Some(LastFailure {
            error,
            until: now + jittered(wait_after(in_a_row)),
            in_a_row,
            since,
        });
        self.failing.store(true, Ordering::Release);
        drop(state);
        self.settled.notify_waiters();
    }

    pub fn succeeded(&self) {
        let mut state = self.lock();
        let was_out = state.last.take().is_some();
        state.probe = None;
        self.failing.store(false, Ordering::Release);
        drop(state);
        if was_out {
            tracing::info!("upstream reachable again");
        }
        self.settled.notify_waiters();
    }

    /// The outage, while openings are failing.
    pub fn outage(&self) -> Option<Outage> {
        let state = self.lock();
        state.last.as_ref().map(|f| Outage {
            since: f.since,
            last_error: f.error.clone(),
        })
    }

    /// Waits while openings are blocked: until the wait after the last failure is over (plus a
    /// jitter of this caller's own, so one caller goes first and probes), or until the probe
    /// under way settles. False when `by` comes first.
    pub async fn wait_usable(&self, by: Instant) -> bool {
        if !self.failing.load(Ordering::Acquire) {
            return true;
        }
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let state = self.lock();
                match &state.last {
                    None => return true,
                    Some(_) if state.probing() => by,
                    Some(last) if Instant::now() < last.until => {
                        let spread = wait_after(last.in_a_row).mul_f64(JITTER);
                        let spread = spread.max(Duration::from_millis(20));
                        last.until + spread.mul_f64(rand::rng().random::<f64>())
                    }
                    Some(_) => return true,
                }
            };
            if Instant::now() >= by {
                return false;
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at.min(by).into()) => {}
            }
        }
    }
}

fn wait_after(in_a_row: u32) -> Duration {
    let growth = GROWTH.powi(in_a_row.saturating_sub(1).min(32) as i32);
    FIRST_WAIT.mul_f64(growth).min(MAX_WAIT)
}

fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(1.0 + JITTER * (2.0 * rand::rng().random::<f64>() - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> TransportError {
        TransportError::Connect("connection refused".into())
    }

    fn end_wait(openings: &Openings) {
        openings.lock().last.as_mut().unwrap().until = Instant::now();
    }

    fn in_a_row(openings: &Openings) -> u32 {
        openings.lock().last.as_ref().unwrap().in_a_row
    }

    #[test]
    fn a_failure_blocks_openings_for_a_wait_that_grows_and_success_clears_it() {
        let openings = Openings::default();
        assert!(openings.blocked().is_none());
        let (early, late) = (openings.begin().unwrap(), openings.begin().unwrap());
        early.failed(refused());
        let blocked = openings.blocked().expect("blocked right after a failure");
        assert!(blocked.to_string().contains("could not connect"));
        assert_eq!(wait_after(1), FIRST_WAIT);
        assert_eq!(wait_after(2), FIRST_WAIT.mul_f64(1.6));
        assert_eq!(wait_after(30), MAX_WAIT);
        end_wait(&openings);
        late.failed(refused());
        assert_eq!(
            in_a_row(&openings),
            1,
            "openings under way when it began count once"
        );
        assert!(
            openings.blocked().is_none(),
            "and do not hold back the probe"
        );
        openings.begin().unwrap().failed(refused());
        assert_eq!(in_a_row(&openings), 2, "the probe's failure grows the wait");
        assert!(openings.outage().is_some());
        openings.succeeded();
        assert!(openings.blocked().is_none());
        assert!(openings.outage().is_none());
    }

    #[test]
    fn after_the_wait_one_opening_probes_and_the_others_are_held_back() {
        let openings = Openings::default();
        let before = openings.begin().unwrap();
        openings.begin().unwrap().failed(refused());
        assert!(openings.begin().is_err(), "during the wait");
        end_wait(&openings);
        let probe = openings.begin().expect("the wait is over: one probe");
        assert!(
            openings.begin().is_err(),
            "a second opening waits for the probe"
        );
        before.failed(refused());
        assert!(
            openings.begin().is_err(),
            "an older opening's failure leaves the probe on"
        );
        drop(probe);
        let probe = openings.begin().expect("a cancelled probe frees the way");
        probe.succeeded();
        let _a = openings.begin().unwrap();
        let _b = openings.begin().expect("openings succeed: no limit");
    }

    #[test]
    fn connections_turned_away_in_a_row_grow_the_wait_though_their_openings_succeeded() {
        let openings = Openings::default();
        openings.begin().unwrap().succeeded();
        openings.turned_away(TransportError::Handshake("GOAWAY".into()), 1);
        assert!(openings.blocked().is_some());
        end_wait(&openings);
        openings.begin().unwrap().succeeded();
        openings.turned_away(TransportError::Handshake("GOAWAY".into()), 6);
        assert_eq!(in_a_row(&openings), 6);
    }

    #[tokio::test]
    async fn waiters_go_on_when_the_probe_succeeds_and_give_up_at_their_deadline() {
        let openings = Arc::new(Openings::default());
        openings.begin().unwrap().failed(refused());
        let soon = Instant::now() + Duration::from_millis(30);
        let far = Instant::now() + Duration::from_secs(30);
        assert!(!openings.wait_usable(Instant::now()).await);
        end_wait(&openings);
        let probe = openings.begin().unwrap();
        assert!(!openings.wait_usable(soon).await, "the probe is still out");
        let waiter = crate::tasks::spawn({
            let openings = openings.clone();
            async move { openings.wait_usable(far).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        probe.succeeded();
        let woke = tokio::time::timeout(Duration::from_secs(1), waiter).await;
        assert!(woke.unwrap().unwrap(), "woken by the probe's success");
    }
}
