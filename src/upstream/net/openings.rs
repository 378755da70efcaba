//! Failed openings of an endpoint's connections, and the wait before the next: while an opening
//! has just failed, calls that need a new connection fail at once with its error rather than
//! each trying in turn (a thousand calls on a dead endpoint would otherwise each wait for a
//! connect timeout), and the wait doubles with each failure in a row.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::upstream::error::TransportError;

/// The first wait after a failed opening, doubled per failure in a row up to `MAX_WAIT`.
const FIRST_WAIT: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Openings {
    last: Mutex<Option<LastFailure>>,
}

#[derive(Debug)]
struct LastFailure {
    error: Arc<TransportError>,
    until: Instant,
    in_a_row: u32,
}

impl Openings {
    /// The last opening's failure, while the wait after it lasts.
    pub fn blocked(&self) -> Option<Arc<TransportError>> {
        let last = self.last.lock().expect("openings lock poisoned");
        last.as_ref()
            .filter(|f| Instant::now() < f.until)
            .map(|f| f.error.clone())
    }

    /// Records a failed opening; its error is shared with the calls that waited for it. Openings
    /// that fail together (started before the first failure's wait) count once.
    pub fn failed(&self, error: TransportError) -> Arc<TransportError> {
        let error = Arc::new(error);
        let mut last = self.last.lock().expect("openings lock poisoned");
        let in_a_row = match last.as_ref() {
            Some(f) if Instant::now() < f.until => f.in_a_row,
            Some(f) => f.in_a_row + 1,
            None => 1,
        };
        *last = Some(LastFailure {
            error: error.clone(),
            until: Instant::now() + wait_after(in_a_row),
            in_a_row,
        });
        error
    }

    pub fn succeeded(&self) {
        *self.last.lock().expect("openings lock poisoned") = None;
    }
}

fn wait_after(in_a_row: u32) -> Duration {
    FIRST_WAIT
        .saturating_mul(1 << in_a_row.saturating_sub(1).min(16))
        .min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> TransportError {
        TransportError::Connect("connection refused".into())
    }

    #[test]
    fn a_failure_blocks_openings_for_a_wait_that_doubles_and_success_clears_it() {
        let openings = Openings::default();
        assert!(openings.blocked().is_none());
        openings.failed(refused());
        let blocked = openings.blocked().expect("blocked right after a failure");
        assert!(blocked.to_string().contains("could not connect"));
        assert_eq!(wait_after(1), FIRST_WAIT);
        assert_eq!(wait_after(2), FIRST_WAIT * 2);
        assert_eq!(wait_after(30), MAX_WAIT);
        openings.failed(refused());
        let in_a_row = || openings.last.lock().unwrap().as_ref().unwrap().in_a_row;
        assert_eq!(in_a_row(), 1, "failures during the wait count once");
        openings.last.lock().unwrap().as_mut().unwrap().until = Instant::now();
        openings.failed(refused());
        assert_eq!(in_a_row(), 2);
        openings.succeeded();
        assert!(openings.blocked().is_none());
    }

    #[test]
    fn the_block_ends_when_its_wait_does() {
        let openings = Openings::default();
        openings.failed(refused());
        openings.last.lock().unwrap().as_mut().unwrap().until = Instant::now();
        assert!(openings.blocked().is_none());
    }
}
