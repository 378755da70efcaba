//! An endpoint's HTTP/2 connections, each shared by many calls, spoken with the `h2` crate.
//!
//! What this reproduces of hyper's and pingora's HTTP/2 clients, each tested in `tests.rs`:
//! - Streams are counted per connection against the smaller of our limit and the server's
//!   `SETTINGS_MAX_CONCURRENT_STREAMS` (hyper leaves the queueing to h2, pingora counts as here).
//!   When every connection is full another is opened, as many at once as the waiting calls
//!   need, up to what the endpoint's ceiling on calls in flight needs; meanwhile calls wait
//!   here, woken as streams end.
//! - A connection that received GOAWAY, or could not start a new stream, takes no new streams
//!   (pingora's "no new streams after GOAWAY"); the streams it already carries finish, then it
//!   leaves the pool and closes, and the next call that finds no room opens a replacement.
//!   Which streams the server never processed, and so are safe to send again, is
//!   `connections.rs`'s to judge. A connection nothing holds any more (the pool forgot it, or
//!   its opening was given up on) closes itself, as h2 does with no handle left.
//! - Keep-alive PINGs, while idle too (hyper's `keep_alive_interval` and `keep_alive_timeout`
//!   with `keep_alive_while_idle`): a connection whose PING goes unanswered is closed, and the
//!   calls on it fail as `Unresponsive`, to be retried on a fresh one. A call that times out or
//!   is cancelled on a connection triggers a PING at once, so a silent connection is found
//!   without waiting for the interval.
//! - One timeout for the whole opening (TCP, proxy, TLS, handshake) and a wait after failed
//!   openings (`openings.rs`), which neither library has per endpoint.
//! - Connections retire at a maximum age (pingora's `max_h2_streams`-style rotation, Envoy's
//!   `max_connection_duration`): drained like a GOAWAY, so nothing in flight is lost and the
//!   next opening resolves the host again, so a DNS change of the provider reaches the pool.
//! - A server that chose HTTP/1.1 (a TLS-inspecting proxy, a load balancer mid-deploy) is
//!   believed for `HTTP1_FALLBACK_FOR`, then offered HTTP/2 again.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use h2::client::SendRequest;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::connect::Stream;
use crate::upstream::body::RequestBody;
use crate::upstream::error::TransportError;

/// HTTP/2 flow-control credit given to the server: answers are small, so this only has to keep
/// a connection's hundred answers from waiting on each other.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Streams refused in a row on one connection before it takes no new ones.
const REFUSALS_BEFORE_RETIRING: usize = 3;
/// How long a server's choice of HTTP/1.1 holds before the next opening offers HTTP/2 again.
pub const HTTP1_FALLBACK_FOR: Duration = Duration::from_secs(300);
/// Connections retire at their maximum age give or take this fraction, so that connections
/// opened together do not all reopen together.
const AGE_JITTER: f64 = 0.1;

/// How often a connection is PINGed, and how long the answer may take.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub interval: Duration,
    pub timeout: Duration,
}

/// One HTTP/2 connection: the handle calls start streams with, held by the pool and the calls
/// on it (not by its driver task, so that when they all let go, h2 closes it).
pub struct Conn {
    sender: SendRequest<RequestBody>,
    /// Our most streams on it; the server's SETTINGS may allow fewer.
    limit: usize,
    status: Arc<Status>,
    /// When it stops taking new streams: its maximum age, jittered.
    retire_at: Instant,
}

/// What the connection's driver task and its calls share.
struct Status {
    in_flight: AtomicUsize,
    /// No new streams: the server sent GOAWAY, or a stream could not start. Its streams still
    /// finish.
    draining: AtomicBool,
    /// Its driver has ended: nothing more travels on it.
    closed: AtomicBool,
    /// Set by the PING check before it closes the connection, so the calls on it say why.
    unresponsive: AtomicBool,
    /// Streams refused with REFUSED_STREAM since the last answer on it: past
    /// `REFUSALS_BEFORE_RETIRING`, it takes no new streams.
    refused_in_a_row: AtomicUsize,
    /// Asks the driver for a PING now.
    check: Notify,
    /// The pool's: a stream ended or a connection closed.
    changed: Arc<Notify>,
}

impl Conn {
    /// Streams it can take now.
    fn room(&self) -> usize {
        if self.is_draining() || self.status.closed.load(Ordering::Acquire) {
            return 0;
        }
        let limit = self.limit.min(self.sender.current_max_send_streams());
        limit.saturating_sub(self.in_flight())
    }

    fn in_flight(&self) -> usize {
        self.status.in_flight.load(Ordering::Acquire)
    }

    fn is_draining(&self) -> bool {
        self.status.draining.load(Ordering::Acquire)
    }

    /// Done: closed, or draining with nothing left on it.
    fn is_done(&self) -> bool {
        self.status.closed.load(Ordering::Acquire) || (self.is_draining() && self.in_flight() == 0)
    }

    /// Takes no new streams from now on.
    pub fn drain(&self) {
        self.status.draining.store(true, Ordering::Release);
    }

    /// Whether the PING check closed it.
    pub fn is_unresponsive(&self) -> bool {
        self.status.unresponsive.load(Ordering::Acquire)
    }

    /// A call on it was answered.
    pub fn answered(&self) {
        self.status.refused_in_a_row.store(0, Ordering::Relaxed);
    }

    /// A stream on it was refused (REFUSED_STREAM): a server shedding load refuses some, one
    /// that keeps refusing on this connection gets it retired (the resends then go elsewhere).
    pub fn refused(&self) {
        let refused = self.status.refused_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if refused >= REFUSALS_BEFORE_RETIRING {
            self.drain();
        }
    }
}

/// A stream's place on a connection, given back when dropped. Dropped before the call ended
/// (its timeout, or the caller gone), it asks the connection for a PING: a call that times out
/// may be the first sign of a silent connection.
pub struct Lease {
    conn: Arc<Conn>,
    ended: bool,
}

impl Lease {
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// A handle to start the stream with.
    pub fn sender(&self) -> SendRequest<RequestBody> {
        self.conn.sender.clone()
    }

    /// The call has its answer or its error.
    pub fn end(mut self) {
        self.ended = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let status = &self.conn.status;
        status.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.ended {
            status.check.notify_one();
        }
        status.changed.notify_one();
    }
}

/// An endpoint's HTTP/2 connections.
pub struct Pool {
    state: Mutex<State>,
    changed: Arc<Notify>,
    /// Our most streams on one connection.
    streams: usize,
    /// The endpoint's ceiling on calls in flight: with the streams a connection takes, how many
    /// connections it can need.
    max_in_flight: usize,
    liveness: Liveness,
    /// A connection stops taking new streams at this age.
    max_age: Duration,
    /// The server chose HTTP/1.1 when offered both over TLS: the pool is not used until then.
    http1_until: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct State {
    conns: Vec<Arc<Conn>>,
    /// Connections being opened, and calls waiting for room.
    opening: usize,
    waiting: usize,
}

impl State {
    /// Forgets the connections that are done; one no call holds then closes.
    fn forget_done(&mut self) {
        self.conns.retain(|c| !c.is_done());
    }

    /// Retires the connections past their age: they finish their calls and take no new ones.
    fn retire_old(&mut self) {
        let now = Instant::now();
        for conn in self.conns.iter().filter(|c| now >= c.retire_at) {
            conn.drain();
        }
    }

    /// Whether a connection takes streams, now or once some of its calls end.
    fn has_live(&self) -> bool {
        self.conns.iter().any(|c| !c.is_draining())
    }

    /// A stream on the connection with the most room, if any has room.
    fn lease(&mut self) -> Option<Lease> {
        let conn = self
            .conns
            .iter()
            .map(|c| (c.room(), c))
            .filter(|(room, _)| *room > 0)
            .max_by_key(|(room, _)| *room)?
            .1;
        conn.status.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Lease {
            conn: conn.clone(),
            ended: false,
        })
    }

    /// Streams one connection takes: ours, or fewer if an open one's server says so.
    fn per_connection(&self, streams: usize) -> usize {
        self.conns
            .iter()
            .map(|c| c.limit.min(c.sender.current_max_send_streams()))
            .min()
            .unwrap_or(streams)
            .max(1)
    }
}

/// What a call that found no room does next.
enum Next {
    Open,
    Wait,
}

impl Pool {
    pub fn new(
        streams: usize,
        max_in_flight: usize,
        liveness: Liveness,
        max_age: Duration,
    ) -> Self {
        Self {
            state: Mutex::default(),
            changed: Arc::new(Notify::new()),
            streams: streams.max(1),
            max_in_flight: max_in_flight.max(1),
            liveness,
            max_age,
            http1_until: Mutex::new(None),
        }
    }

    /// Whether the server chose HTTP/1.1 lately: every call goes that way until then.
    pub fn is_http1_only(&self) -> bool {
        let until = self
            .http1_until
            .lock()
            .expect("HTTP/1.1 flag lock poisoned");
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Marks the server as choosing HTTP/1.1 for `HTTP1_FALLBACK_FOR`; true when it was not
    /// marked already.
    pub fn set_http1_only(&self) -> bool {
        let first = !self.is_http1_only();
        *self
            .http1_until
            .lock()
            .expect("HTTP/1.1 flag lock poisoned") = Some(Instant::now() + HTTP1_FALLBACK_FOR);
        self.changed.notify_waiters();
        first
    }

    /// Whether a connection takes streams now or will once some of its calls end: while one
    /// does, an endpoint whose openings fail is still usable.
    pub fn has_live(&self) -> bool {
        let mut state = self.state();
        state.forget_done();
        state.has_live()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("HTTP/2 pool lock poisoned")
    }

    /// A stream on a connection with room now, if there is one. Connections past their age
    /// are retired first, unless `keep_old` (openings are failing: an old connection that
    /// works is better than none).
    pub fn try_lease(&self, keep_old: bool) -> Option<Lease> {
        let mut state = self.state();
        if !keep_old {
            state.retire_old();
        }
        state.forget_done();
        state.lease()
    }

    /// Whether a call that found no room should open a connection or wait for room: open while
    /// the connections being opened cannot take every waiting call, up to what the endpoint's
    /// ceiling needs. Counts the caller as waiting when it is to wait.
    fn next_step(&self, state: &mut State) -> Next {
        let per_connection = state.per_connection(self.streams);
        let needed = self.max_in_flight.div_ceil(per_connection);
        let live = state.conns.iter().filter(|c| !c.is_draining()).count();
        if live + state.opening < needed && state.opening * per_connection <= state.waiting {
            state.opening += 1;
            Next::Open
        } else {
            state.waiting += 1;
            Next::Wait
        }
    }

    /// A stream, opening a connection with `open` or waiting for room as the pool needs; `None`
    /// when the server speaks HTTP/1.1 only. Fails with an opening's error: this call's own, or,
    /// while no connection can take streams, the last one during the wait after it (`blocked`).
    /// With a connection that is only full, a failed opening elsewhere makes a call wait for
    /// room there, not fail.
    pub async fn lease<F, Fut>(
        &self,
        open: F,
        blocked: impl Fn() -> Option<Arc<TransportError>>,
    ) -> Result<Option<Lease>, TransportError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<Arc<Conn>>, TransportError>>,
    {
        loop {
            // Enabled before the state is read, so a wake-up between the two is not lost; boxed
            // so the opening branch can let it go (a `notify_one` it took would wait for the
            // opening to end before passing to another call).
            let mut notified = Box::pin(self.changed.notified());
            notified.as_mut().enable();
            let next = {
                let mut state = self.state();
                state.forget_done();
                if self.is_http1_only() {
                    return Ok(None);
                }
                if let Some(lease) = state.lease() {
                    return Ok(Some(lease));
                }
                match blocked() {
                    Some(failure) if !state.has_live() => {
                        return Err(TransportError::Shared(failure));
                    }
                    // No opening during the wait after a failed one: room will come.
                    Some(_) => {
                        state.waiting += 1;
                        Next::Wait
                    }
                    None => self.next_step(&mut state),
                }
            };
            match next {
                Next::Open => {
                    drop(notified);
                    let opening = Opening(self);
                    // Boxed apart: opening (DNS, TCP, proxy, TLS, handshake) is a large future,
                    // and every call waiting here would otherwise hold room for one.
                    let conn = match Box::pin(open()).await {
                        Ok(Some(conn)) => conn,
                        Ok(None) => return Ok(None),
                        // A connection that is only full will have room: wait for it there.
                        Err(_) if self.state().has_live() => continue,
                        Err(error) => return Err(error),
                    };
                    let mut state = self.state();
                    state.conns.push(conn);
                    let lease = state.lease();
                    drop(state);
                    drop(opening);
                    if lease.is_some() {
                        return Ok(lease);
                    }
                }
                Next::Wait => {
                    let _waiting = Waiting(self);
                    notified.await;
                }
            }
        }
    }

    /// Starts an HTTP/2 connection on `stream`: the handshake, and its driver task.
    pub async fn handshake(&self, stream: Stream) -> Result<Arc<Conn>, TransportError> {
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            // Until the server's SETTINGS say otherwise: h2 assumes no limit.
            .initial_max_send_streams(self.streams)
            .handshake(stream)
            .await
            .map_err(|e| TransportError::Handshake(e.into()))?;
        let (settled, answered) = oneshot::channel();
        let status = Arc::new(Status {
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            unresponsive: AtomicBool::new(false),
            refused_in_a_row: AtomicUsize::new(0),
            check: Notify::new(),
            changed: self.changed.clone(),
        });
        crate::tasks::spawn(drive(connection, status.clone(), self.liveness, settled));
        let age = 1.0 + AGE_JITTER * (2.0 * rand::random::<f64>() - 1.0);
        let conn = Arc::new(Conn {
            sender,
            limit: self.streams,
            status,
            retire_at: Instant::now() + self.max_age.mul_f64(age),
        });
        // The server's SETTINGS come before its answer to our first PING: once it is here, the
        // stream limit is the server's, and the first calls do not queue unseen inside h2.
        answered.await.map_err(|_| {
            TransportError::Handshake("the connection closed before the server's SETTINGS".into())
        })?;
        Ok(conn)
    }
}

/// Holds a place among the connections being opened; the waiting calls are told when it ends,
/// opened, failed or cancelled, so none waits on an opening nobody is making.
struct Opening<'a>(&'a Pool);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.state().opening -= 1;
        self.0.changed.notify_waiters();
    }
}

/// Counts a call among those waiting for room.
struct Waiting<'a>(&'a Pool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state().waiting -= 1;
    }
}

/// The connection's task: drives it, and PINGs it at once (`settled` is told of the answer),
/// then every `interval` or when a call asks, closing it when a PING goes unanswered for
/// `timeout`. Dropping the connection fails the calls still on it, which then retry elsewhere.
async fn drive(
    mut connection: h2::client::Connection<Stream, RequestBody>,
    conn: Arc<Status>,
    liveness: Liveness,
    settled: oneshot::Sender<()>,
) {
    let mut settled = Some(settled);
    let mut pings = connection
        .ping_pong()
        .expect("the PING handle is taken once, here");
    let mut next_ping = Instant::now();
    // When the PING in flight must be answered by.
    let mut answer_by: Option<Instant> = None;
    if pings.send_ping(h2::Ping::opaque()).is_ok() {
        answer_by = Some(Instant::now() + liveness.timeout);
    }
    loop {
        let ping_now = tokio::select! {
            ended = &mut connection => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "upstream HTTP/2 connection closed");
                }
                break;
            }
            pong = poll_fn(|cx| pings.poll_pong(cx)), if answer_by.is_some() => {
                if pong.is_err() {
                    break;
                }
                answer_by = None;
                next_ping = Instant::now() + liveness.interval;
                if let Some(settled) = settled.take() {
                    let _ = settled.send(());
                }
                false
            }
            // (`select!` builds every branch's future, disabled or not: hence the `unwrap_or`.)
            () = tokio::time::sleep_until(answer_by.unwrap_or(next_ping)), if answer_by.is_some() => {
                conn.unresponsive.store(true, Ordering::Release);
                tracing::warn!(
                    timeout_s = liveness.timeout.as_secs_f64(),
                    calls = conn.in_flight.load(Ordering::Acquire),
                    "upstream HTTP/2 connection did not answer a PING: replaced"
                );
                break;
            }
            () = tokio::time::sleep_until(next_ping), if answer_by.is_none() => true,
            () = conn.check.notified(), if answer_by.is_none() => true,
        };
        if ping_now {
            if pings.send_ping(h2::Ping::opaque()).is_err() {
                break;
            }
            answer_by = Some(Instant::now() + liveness.timeout);
        }
    }
    conn.closed.store(true, Ordering::Release);
    drop(connection);
    conn.changed.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_choice_of_http1_holds_for_a_while_then_http2_is_offered_again() {
        let liveness = Liveness {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        };
        let pool = Pool::new(100, 512, liveness, Duration::from_secs(300));
        assert!(!pool.is_http1_only());
        assert!(pool.set_http1_only(), "said the first time");
        assert!(!pool.set_http1_only(), "once");
        assert!(pool.is_http1_only());
        let past = Instant::now() - Duration::from_secs(1);
        *pool.http1_until.lock().unwrap() = Some(past);
        assert!(!pool.is_http1_only(), "HTTP/2 is offered again");
        assert!(HTTP1_FALLBACK_FOR >= Duration::from_secs(60));
    }
}
