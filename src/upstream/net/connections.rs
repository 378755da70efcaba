//! One endpoint's connections and one call over them: HTTP/2 (`http2.rs`, many calls on a
//! connection) or HTTP/1.1 (`http1.rs`, one call on a connection at a time).
//!
//! HTTP/2 is spoken with the `h2` crate directly, HTTP/1.1 with hyper's connection API, rather
//! than through a pooled client (reqwest, hyper-util's legacy client or pool services, or even
//! hyper's HTTP/2 connection, which spawns two tasks per call the size of its connection task):
//! those keep 3-10 KiB of state per call in flight, where the design allows 6 KiB for everything.
//! A call here is the caller's own future plus h2's stream record.
//!
//! A request the server never processed is sent again at once, on another connection, and is
//! no failure of the call's: RFC 9113 (8.7) says which those are over HTTP/2, a stream above a
//! GOAWAY's last stream id or reset with REFUSED_STREAM, and one that could not start because
//! its connection was closing; over HTTP/1.1, one hyper hands back unsent. hyper-util's legacy
//! client resends the HTTP/1.1 kind only, and nothing over HTTP/2; nginx, CDNs and load
//! balancers send GOAWAY on a connection's age or request count as a matter of routine, so
//! here both are resent, without spending the retry budget or the endpoint's health. Resends
//! after the first wait a pause that grows; a connection that received GOAWAY, or that refused
//! three streams in a row, takes no new ones (the resends go elsewhere); and a server that turns
//! a new connection away before processing its first stream counts as a failed opening, so a
//! server that refuses everything costs a backoff, not a storm of handshakes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

use super::connect::{Connector, ForwardProxy, Protocol};
use super::http1::{self, Idle};
use super::http2::{Conn, Lease, Liveness, Pool};
use super::openings::{Openings, Outage, Permit};
use crate::upstream::body::RequestBody;
use crate::upstream::error::{BuildError, TransportError};

/// Resends of a request the server never processed, before its last refusal counts as the
/// call's failure: a server that refuses every stream is failing, not rotating connections.
const MAX_RESENDS: u32 = 16;
/// The pause before the second resend, doubled for each after it (the first goes at once: one
/// GOAWAY is routine).
const RESEND_PAUSE: Duration = Duration::from_millis(5);
/// HTTP/1.1 connections opened at once (TCP, proxy, TLS), per endpoint: a burst of calls after
/// a fallback to HTTP/1.1 waits for these rather than starting hundreds of TLS handshakes.
const HTTP1_OPENINGS_AT_ONCE: usize = 16;

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How calls to an endpoint use their connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Over HTTP/2 (when asked for), at most this many calls on one connection.
    pub http2_streams: Option<usize>,
    /// The endpoint's ceiling on calls in flight.
    pub max_in_flight: usize,
    pub liveness: Liveness,
    /// For the whole opening of a connection: TCP, proxy, TLS, handshake.
    pub open_timeout: Duration,
    /// An HTTP/2 connection stops taking new streams at this age.
    pub max_connection_age: Duration,
    pub max_response_bytes: usize,
}

/// Why `try_send` failed: `Unsent` when the server never processed the request, so sending it
/// again elsewhere is safe.
enum Failed {
    Unsent(RequestBody, TransportError),
    Sent(TransportError),
}

impl From<TransportError> for Failed {
    fn from(error: TransportError) -> Self {
        Self::Sent(error)
    }
}

impl Failed {
    fn into_error(self) -> TransportError {
        match self {
            Self::Unsent(_, error) | Self::Sent(error) => error,
        }
    }
}

pub struct Connections {
    connector: Connector,
    /// The call's URL, which HTTP/2 sends whole, and every call's headers (the key among them,
    /// marked sensitive).
    url: Uri,
    headers: HeaderMap,
    /// HTTP/1.1's request target (the path, or the whole URL through a forward proxy) and
    /// headers (`Host` added, and the proxy's credentials).
    http1_target: Uri,
    http1_headers: HeaderMap,
    /// HTTP/2's connections, when asked for.
    http2: Option<Pool>,
    idle: Idle,
    /// HTTP/1.1 openings under way: at most `HTTP1_OPENINGS_AT_ONCE`.
    http1_openings: tokio::sync::Semaphore,
    openings: Openings,
    limits: Limits,
    /// Requests sent again because the server never processed them.
    resent: AtomicU64,
    /// New connections turned away (GOAWAY before their first stream) since the last answer.
    turned_away: AtomicU32,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("connector", &self.connector)
            .field("http2", &self.http2.is_some())
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// Connections for POSTs to `url`, each with `headers`.
    pub fn new(
        connector: Connector,
        url: Uri,
        headers: HeaderMap,
        limits: Limits,
    ) -> Result<Self, BuildError> {
        let authority = url.authority().ok_or(BuildError::InvalidUrl)?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| BuildError::InvalidUrl)?;
        let mut http1_headers = headers.clone();
        http1_headers.insert(HOST, host);
        let http1_target = match connector.forward_proxy() {
            Some(ForwardProxy { auth }) => {
                if let Some(auth) = auth {
                    let mut auth = auth.clone();
                    auth.set_sensitive(true);
                    http1_headers.insert(PROXY_AUTHORIZATION, auth);
                }
                url.clone()
            }
            None => url
                .path_and_query()
                .map_or(Uri::from_static("/"), |p| Uri::from(p.clone())),
        };
        let http2 = limits.http2_streams.map(|streams| {
            let age = limits.max_connection_age;
            Pool::new(streams, limits.max_in_flight, limits.liveness, age)
        });
        // HTTP/2's headers hold a `content-length` from the start, each call's copy replacing
        // its value: inserting it into a copy would grow the copy's table, for every call in
        // flight (HTTP/1.1's comes from hyper).
        let mut headers = headers;
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        Ok(Self {
            connector,
            url,
            headers,
            http1_target,
            http1_headers,
            http2,
            idle: Idle::new(limits.max_in_flight),
            http1_openings: tokio::sync::Semaphore::new(HTTP1_OPENINGS_AT_ONCE),
            openings: Openings::default(),
            limits,
            resent: AtomicU64::new(0),
            turned_away: AtomicU32::new(0),
        })
    }

    /// POSTs `body` and reads the whole answer. A request the server never processed is sent
    /// again at once; any other failure is the caller's to retry.
    pub async fn send(&self, mut body: RequestBody) -> Result<Answer, TransportError> {
        // One `await` in a loop rather than two in a row: the future keeps room for one
        // attempt, not two.
        let mut resends = 0;
        loop {
            body = match self.try_send(body).await {
                Err(Failed::Unsent(unsent, error)) if resends < MAX_RESENDS => {
                    tracing::debug!(upstream = ?self.connector, %error, resends, "request not processed by the server: sent again");
                    resends += 1;
                    self.resent.fetch_add(1, Ordering::Relaxed);
                    unsent
                }
                result => return result.map_err(Failed::into_error),
            };
            // Outside the match, so the failed attempt's result is not held across the pause;
            // boxed: rare, and every call's future would otherwise carry a timer.
            if resends > 1 {
                let pause = RESEND_PAUSE * (1 << (resends - 2).min(10));
                Box::pin(tokio::time::sleep(pause)).await;
            }
        }
    }

    /// Waits while no connection can be had: openings are failing (waiting after a failure, or
    /// one probing) and no HTTP/2 connection is live. False when `by` comes first.
    pub async fn wait_usable(&self, by: Instant) -> bool {
        if self.http2_pool().is_some_and(Pool::has_live) {
            return true;
        }
        self.openings.wait_usable(by).await
    }

    /// Since when, and why, connections cannot be opened, while they cannot.
    pub fn outage(&self) -> Option<Outage> {
        self.openings.outage()
    }

    /// The error of the last failed opening, while openings are blocked.
    pub fn blocked(&self) -> Option<Arc<TransportError>> {
        self.openings.blocked()
    }

    /// Requests sent again so far because the server never processed them.
    pub fn resent(&self) -> u64 {
        self.resent.load(Ordering::Relaxed)
    }

    async fn try_send(&self, body: RequestBody) -> Result<Answer, Failed> {
        if let Some(pool) = self.http2_pool() {
            let keep_old = self.openings.blocked().is_some();
            let lease = match pool.try_lease(keep_old) {
                Some(lease) => Some(lease),
                // Boxed: waiting for room or opening a connection (DNS, TCP, proxy, TLS,
                // handshake) is a large future that every call would otherwise carry while it
                // waits for its answer.
                None => {
                    Box::pin(pool.lease(|| self.open_http2(pool), || self.openings.blocked()))
                        .await?
                }
            };
            if let Some(lease) = lease {
                return self.over_http2(lease, body).await;
            }
        }
        // Boxed: hyper's HTTP/1.1 exchange is the larger future, and an HTTP/1.1 call has a
        // connection of its own anyway.
        Box::pin(self.over_http1(body)).await
    }

    fn http2_pool(&self) -> Option<&Pool> {
        self.http2.as_ref().filter(|pool| !pool.is_http1_only())
    }

    async fn over_http2(&self, lease: Lease, body: RequestBody) -> Result<Answer, Failed> {
        let result = self.exchange_http2(&lease, body).await;
        lease.end();
        result
    }

    async fn exchange_http2(&self, lease: &Lease, body: RequestBody) -> Result<Answer, Failed> {
        let conn = lease.conn();
        // Before the stream starts, any failure leaves the request unsent, and the connection
        // is done: marked so, the resend (and every later call) goes elsewhere.
        let not_started = |body, e: h2::Error| {
            conn.drain();
            Failed::Unsent(body, TransportError::Send(e.into()))
        };
        let mut sender = match lease.sender().ready().await {
            Ok(sender) => sender,
            Err(e) => return Err(not_started(body, e)),
        };
        let mut request = Request::post(self.url.clone())
            .body(())
            .expect("the URL was parsed at start-up");
        *request.headers_mut() = self.headers.clone();
        // As hyper's client does: a front that relays to an HTTP/1.1 backend (Envoy, Istio) can
        // then forward the body as it is instead of chunked, which some backends refuse (411).
        request.headers_mut().insert(
            CONTENT_LENGTH,
            HeaderValue::from(bytes::Buf::remaining(&body)),
        );
        let (response, mut stream) = match sender.send_request(request, false) {
            Ok(sent) => sent,
            Err(e) => return Err(not_started(body, e)),
        };
        drop(sender);
        // A copy, by reference, in case the server turns the stream away unprocessed.
        let again = body.clone();
        let (parts, mut incoming) = match stream.send_data(body, true) {
            Ok(()) => response.await,
            // Reset or refused since it started: h2 says only "inactive stream" here, the
            // answer says why.
            Err(e) => Err(response.await.err().unwrap_or(e)),
        }
        .map_err(|e| self.stream_failed(conn, e, &again, stream.stream_id().as_u32() == 1))?
        .into_parts();
        drop(again);
        conn.answered();
        self.turned_away.store(0, Ordering::Relaxed);
        let mut body = Received::default();
        while let Some(chunk) = incoming.data().await {
            let chunk = chunk.map_err(|e| match self.lost(conn) {
                Some(lost) => lost,
                None => TransportError::Body(e.into()),
            })?;
            // Credit goes back at once: the whole answer is read regardless.
            let _ = incoming.flow_control().release_capacity(chunk.len());
            if body.len() + chunk.len() > self.limits.max_response_bytes {
                // Dropping the stream resets it: the rest is not read.
                return Err(TransportError::TooLarge(self.limits.max_response_bytes).into());
            }
            body.push(chunk);
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.into_bytes(),
        })
    }

    /// A started stream's failure: unsent when the server never processed it, the PING
    /// check's verdict when that closed the connection, else the error itself. `first_stream`:
    /// the connection's first (refused by GOAWAY, the server processed nothing on it: its last
    /// stream id is 0).
    fn stream_failed(
        &self,
        conn: &Conn,
        error: h2::Error,
        body: &RequestBody,
        first_stream: bool,
    ) -> Failed {
        if let Some(lost) = self.lost(conn) {
            return lost.into();
        }
        if never_processed(&error) {
            if error.is_go_away() {
                conn.drain();
            } else {
                conn.refused();
            }
            if error.is_go_away() && first_stream {
                // Turned away before it processed anything: as good as an opening that
                // failed, so the next opening waits, longer each time in a row (a server that
                // does this to every connection costs a backoff, not a handshake per resend).
                let streak = self.turned_away.fetch_add(1, Ordering::Relaxed) + 1;
                let why = "the server sent GOAWAY on a new connection before processing a request";
                self.openings
                    .turned_away(TransportError::Handshake(why.into()), streak);
            }
            return Failed::Unsent(body.clone(), TransportError::Send(error.into()));
        }
        TransportError::Send(error.into()).into()
    }

    fn lost(&self, conn: &Conn) -> Option<TransportError> {
        conn.is_unresponsive()
            .then_some(TransportError::Unresponsive(self.limits.liveness.timeout))
    }

    async fn over_http1(&self, body: RequestBody) -> Result<Answer, Failed> {
        let mut sender = match self.idle.take().await {
            Some(sender) => sender,
            None => {
                // Waits for one of the openings at once; a connection another call left idle
                // meanwhile is taken instead.
                let _opening = self
                    .http1_openings
                    .acquire()
                    .await
                    .expect("the openings semaphore is never closed");
                match self.idle.take().await {
                    Some(sender) => sender,
                    None => self.open_http1().await?,
                }
            }
        };
        let mut request = Request::post(self.http1_target.clone())
            .body(Full::new(body.clone()))
            .expect("the URL was parsed at start-up");
        *request.headers_mut() = self.http1_headers.clone();
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => {
                let unsent = e.take_message().is_some();
                let error = TransportError::Send(e.into_error().into());
                return Err(if unsent {
                    Failed::Unsent(body, error)
                } else {
                    Failed::Sent(error)
                });
            }
        };
        let (parts, incoming) = response.into_parts();
        let cap = self.limits.max_response_bytes;
        let body = Limited::new(incoming, cap)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    TransportError::TooLarge(cap)
                } else {
                    TransportError::Body(e)
                }
            })?
            .to_bytes();
        self.idle.put(sender);
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// A new HTTP/2 connection for the pool, or `None` when the server chose HTTP/1.1 (its
    /// connection then waits idle for the next call, and every call goes over HTTP/1.1).
    async fn open_http2(&self, pool: &Pool) -> Result<Option<Arc<Conn>>, TransportError> {
        let permit = self.openings.begin().map_err(TransportError::Shared)?;
        let opened = self
            .within_open_timeout(async {
                let (stream, protocol) = self.connector.connect().await?;
                if protocol == Protocol::Http2 {
                    return pool.handshake(stream).await.map(Some);
                }
                if pool.set_http1_only() {
                    tracing::warn!(
                        upstream = ?self.connector,
                        "the server chose HTTP/1.1 when offered HTTP/2: calls go over HTTP/1.1"
                    );
                }
                self.idle.put(http1::handshake(stream).await?);
                Ok(None)
            })
            .await;
        settle(permit, opened)
    }

    async fn open_http1(&self) -> Result<http1::Sender, TransportError> {
        let permit = self.openings.begin().map_err(TransportError::Shared)?;
        let opened = Box::pin(self.within_open_timeout(async {
            let (stream, _) = self.connector.connect().await?;
            http1::handshake(stream).await
        }))
        .await;
        settle(permit, opened)
    }

    async fn within_open_timeout<T>(
        &self,
        opening: impl Future<Output = Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        let limit = self.limits.open_timeout;
        tokio::time::timeout(limit, opening)
            .await
            .unwrap_or(Err(TransportError::OpenTimeout(limit)))
    }
}

/// Records an opening's outcome; a failure is shared with the calls that waited for it.
fn settle<T>(permit: Permit<'_>, opened: Result<T, TransportError>) -> Result<T, TransportError> {
    match opened {
        Ok(opened) => {
            permit.succeeded();
            Ok(opened)
        }
        Err(error) => Err(TransportError::Shared(permit.failed(error))),
    }
}

/// RFC 9113 (8.7): the server did not process a stream it refused with REFUSED_STREAM, nor one
/// above its GOAWAY's last stream id (h2 fails exactly those with the GOAWAY's error).
fn never_processed(error: &h2::Error) -> bool {
    error.is_remote() && (error.is_go_away() || error.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// A response body read in chunks, copied only when there is more than one.
#[derive(Default)]
struct Received {
    first: Bytes,
    rest: Option<BytesMut>,
}

impl Received {
    fn len(&self) -> usize {
        self.rest.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn push(&mut self, chunk: Bytes) {
        match &mut self.rest {
            Some(rest) => rest.extend_from_slice(&chunk),
            None if self.first.is_empty() => self.first = chunk,
            None => {
                let mut rest = BytesMut::from(&self.first[..]);
                rest.extend_from_slice(&chunk);
                self.rest = Some(rest);
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        self.rest.map_or(self.first, BytesMut::freeze)
    }
}
