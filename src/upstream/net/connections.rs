//! One endpoint's connections and one call over them. HTTP/2: a fixed set of connections, each
//! shared by many calls, opened on first use and again after it closes (one opening at a time per
//! connection; calls that waited on a failed opening fail with its error rather than each trying
//! in turn). HTTP/1.1: idle connections kept for the next call, one call per connection.
//!
//! HTTP/2 is spoken with the `h2` crate directly, HTTP/1.1 with hyper's connection API, rather
//! than through a pooled client (reqwest, hyper-util's legacy client or pool services, or even
//! hyper's HTTP/2 connection, which spawns two tasks per call the size of its connection task):
//! those keep 3-10 KiB of state per call in flight, where the design allows 6 KiB for everything.
//! A call here is the caller's own future plus h2's stream record.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::connect::{Connector, Protocol, Stream};
use crate::upstream::body::RequestBody;
use crate::upstream::error::{BuildError, TransportError};

/// An idle HTTP/1.1 connection older than this is closed rather than reused: servers and load
/// balancers drop idle connections after a minute or two, and a call sent on one just dropped
/// fails.
const IDLE_FOR: Duration = Duration::from_secs(90);

/// HTTP/2 flow-control credit given to the server: answers are small, so this only has to keep
/// a connection's hundred answers from waiting on each other.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An open HTTP/2 connection: its handle, and whether its driver task has ended.
#[derive(Clone)]
struct Http2 {
    sender: h2::client::SendRequest<RequestBody>,
    closed: Arc<AtomicBool>,
}

/// One shared HTTP/2 connection.
#[derive(Default)]
struct Shared {
    conn: Mutex<Option<Http2>>,
    /// Held while the connection is being opened.
    opening: tokio::sync::Mutex<()>,
    /// Openings tried, and the last one's failure: calls that waited on it fail with it.
    attempts: AtomicU64,
    failure: Mutex<Option<Arc<TransportError>>>,
}

impl Shared {
    fn live(&self) -> Option<Http2> {
        let mut conn = self.conn.lock().expect("connection lock poisoned");
        if conn
            .as_ref()
            .is_some_and(|c| c.closed.load(Ordering::Acquire))
        {
            *conn = None;
        }
        conn.clone()
    }
}

/// A connection a call goes out on.
enum Conn {
    Shared(Http2),
    Own(http1::SendRequest<Full<RequestBody>>),
}

/// Why `try_send` failed: `Unsent` when the request never left (the connection had closed), so
/// sending it again elsewhere is safe.
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
    /// The call's URL (HTTP/2 sends it whole) and its path (HTTP/1.1's request target).
    url: Uri,
    path: Uri,
    /// Every call's headers (the key among them, marked sensitive); HTTP/1.1 adds `Host`.
    headers: HeaderMap,
    host: HeaderValue,
    /// HTTP/2's connections; empty for HTTP/1.1.
    shared: Box<[Shared]>,
    next: AtomicUsize,
    /// The server chose HTTP/1.1 when offered both over TLS: every call goes that way.
    http1_only: AtomicBool,
    idle: Mutex<Vec<(http1::SendRequest<Full<RequestBody>>, Instant)>>,
    max_idle: usize,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("connector", &self.connector)
            .field("http2_connections", &self.shared.len())
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// Connections for up to `max_in_flight` POSTs to `url` at once, each with `headers`; over
    /// HTTP/2 (when asked for) at most `http2_streams` on one connection.
    pub fn new(
        connector: Connector,
        url: Uri,
        headers: HeaderMap,
        http2_streams: Option<usize>,
        max_in_flight: usize,
    ) -> Result<Self, BuildError> {
        let shared =
            http2_streams.map_or(0, |streams| max_in_flight.div_ceil(streams.max(1)).max(1));
        let authority = url.authority().ok_or(BuildError::InvalidUrl)?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| BuildError::InvalidUrl)?;
        let path = url
            .path_and_query()
            .map_or(Uri::from_static("/"), |p| Uri::from(p.clone()));
        Ok(Self {
            connector,
            url,
            path,
            headers,
            host,
            shared: (0..shared).map(|_| Shared::default()).collect(),
            next: AtomicUsize::new(0),
            http1_only: AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
            max_idle: max_in_flight,
        })
    }

    /// POSTs `body` and reads the whole answer. A request that never left because its
    /// connection had closed is sent once more; any other failure is the caller's to retry.
    pub async fn send(&self, mut body: RequestBody) -> Result<Answer, TransportError> {
        // One `await` in a loop rather than two in a row: the future keeps room for one
        // attempt, not two.
        let mut resent = false;
        loop {
            match self.try_send(body).await {
                Err(Failed::Unsent(unsent, _)) if !resent => {
                    body = unsent;
                    resent = true;
                }
                result => return result.map_err(Failed::into_error),
            }
        }
    }

    async fn try_send(&self, body: RequestBody) -> Result<Answer, Failed> {
        match self.conn().await? {
            Conn::Shared(conn) => self.over_http2(conn, body).await,
            // Boxed: hyper's HTTP/1.1 exchange is the larger future, and an HTTP/1.1 call has a
            // connection of its own anyway.
            Conn::Own(sender) => Box::pin(self.over_http1(sender, body)).await,
        }
    }

    async fn over_http2(&self, conn: Http2, body: RequestBody) -> Result<Answer, Failed> {
        // A connection that cannot take a new stream is done: marked so, the resend (and every
        // later call) opens a fresh one without waiting for its task to notice.
        let unsent = |body, e: h2::Error| {
            conn.closed.store(true, Ordering::Release);
            Failed::Unsent(body, TransportError::Send(e.into()))
        };
        let mut sender = match conn.sender.ready().await {
            Ok(sender) => sender,
            Err(e) => return Err(unsent(body, e)),
        };
        let mut request = Request::post(self.url.clone())
            .body(())
            .expect("the URL was parsed at start-up");
        *request.headers_mut() = self.headers.clone();
        let (response, mut stream) = match sender.send_request(request, false) {
            Ok(sent) => sent,
            Err(e) => return Err(unsent(body, e)),
        };
        drop(sender);
        let sent = |e: h2::Error| Failed::Sent(TransportError::Send(e.into()));
        stream.send_data(body, true).map_err(sent)?;
        let (parts, mut incoming) = response.await.map_err(sent)?.into_parts();
        let mut body = Received::default();
        while let Some(chunk) = incoming.data().await {
            let chunk = chunk.map_err(|e| TransportError::Body(e.into()))?;
            // Credit goes back at once: the whole answer is read regardless.
            let _ = incoming.flow_control().release_capacity(chunk.len());
            body.push(chunk);
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.into_bytes(),
        })
    }

    async fn over_http1(
        &self,
        mut sender: http1::SendRequest<Full<RequestBody>>,
        body: RequestBody,
    ) -> Result<Answer, Failed> {
        let mut request = Request::post(self.path.clone())
            .body(Full::new(body.clone()))
            .expect("the URL was parsed at start-up");
        *request.headers_mut() = self.headers.clone();
        request.headers_mut().insert(HOST, self.host.clone());
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
        let body = incoming
            .collect()
            .await
            .map_err(|e| TransportError::Body(e.into()))?
            .to_bytes();
        self.keep_idle(sender);
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn conn(&self) -> Result<Conn, TransportError> {
        if self.shared.is_empty() || self.http1_only.load(Ordering::Relaxed) {
            return Ok(Conn::Own(self.idle_or_new().await?));
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        let slot = &self.shared[turn];
        match slot.live() {
            Some(conn) => Ok(Conn::Shared(conn)),
            // Boxed: opening a connection (DNS, TCP, proxy, TLS, handshake) is a large future
            // that every call would otherwise carry while it waits for its answer.
            None => Box::pin(self.open_shared(slot)).await,
        }
    }

    /// The slot's connection, opened unless another call opened it meanwhile.
    async fn open_shared(&self, slot: &Shared) -> Result<Conn, TransportError> {
        let seen = slot.attempts.load(Ordering::Acquire);
        let _opening = slot.opening.lock().await;
        if let Some(conn) = slot.live() {
            return Ok(Conn::Shared(conn));
        }
        if slot.attempts.load(Ordering::Acquire) != seen
            && let Some(failure) = slot.failure.lock().expect("failure lock poisoned").clone()
        {
            return Err(TransportError::Shared(failure));
        }
        slot.attempts.fetch_add(1, Ordering::AcqRel);
        let opened = self.open(slot).await;
        let mut failure = slot.failure.lock().expect("failure lock poisoned");
        match opened {
            Ok(conn) => {
                *failure = None;
                Ok(conn)
            }
            Err(error) => {
                let error = Arc::new(error);
                *failure = Some(error.clone());
                Err(TransportError::Shared(error))
            }
        }
    }

    async fn open(&self, slot: &Shared) -> Result<Conn, TransportError> {
        let (stream, protocol) = self.connector.connect().await?;
        if protocol == Protocol::Http1 {
            if !self.http1_only.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    upstream = ?self.connector,
                    "the server chose HTTP/1.1 when offered HTTP/2: calls go over HTTP/1.1"
                );
            }
            return Ok(Conn::Own(handshake_http1(stream).await?));
        }
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(stream)
            .await
            .map_err(|e| TransportError::Handshake(e.into()))?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection closed");
            }
            ended.store(true, Ordering::Release);
        });
        let conn = Http2 { sender, closed };
        *slot.conn.lock().expect("connection lock poisoned") = Some(conn.clone());
        Ok(Conn::Shared(conn))
    }

    async fn idle_or_new(&self) -> Result<http1::SendRequest<Full<RequestBody>>, TransportError> {
        loop {
            let next = self.idle.lock().expect("idle lock poisoned").pop();
            let Some((mut sender, since)) = next else {
                let (stream, _) = Box::pin(self.connector.connect()).await?;
                return Box::pin(handshake_http1(stream)).await;
            };
            if since.elapsed() < IDLE_FOR && sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
    }

    fn keep_idle(&self, sender: http1::SendRequest<Full<RequestBody>>) {
        let mut idle = self.idle.lock().expect("idle lock poisoned");
        if idle.len() < self.max_idle && !sender.is_closed() {
            idle.push((sender, Instant::now()));
        }
    }
}

async fn handshake_http1(
    stream: Stream,
) -> Result<http1::SendRequest<Full<RequestBody>>, TransportError> {
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| TransportError::Handshake(e.into()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream HTTP/1.1 connection closed");
        }
    });
    Ok(sender)
}

/// A response body read in chunks, copied only when there is more than one.
#[derive(Default)]
struct Received {
    first: Bytes,
    rest: Option<BytesMut>,
}

impl Received {
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
