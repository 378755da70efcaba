//! The behaviours `http2.rs`, `http1.rs`, `connect.rs` and `connections.rs` promise, each against
//! a server on loopback that does the one thing under test: h2's own server for HTTP/2, hyper's
//! for HTTP/1.1, and a few lines of TCP for proxies. nginx and Squid meet the
//! same code in scripts/transport-check.sh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use http::{HeaderMap, Response, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::connect::Connector;
use super::connections::{Connections, Limits};
use super::http1::Idle;
use super::http2::Liveness;
use super::{Proxies, trusted_roots};
use crate::upstream::body::Frame;
use crate::upstream::error::{BuildError, TransportError};

const ANSWER: &[u8] = br#"{"ok":true}"#;

fn limits(http2_streams: Option<usize>) -> Limits {
    Limits {
        http2_streams,
        max_in_flight: 64,
        liveness: Liveness {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        },
        open_timeout: Duration::from_secs(5),
        max_connection_age: Duration::from_secs(300),
        max_response_bytes: 1 << 20,
    }
}

fn connections_with(url: &str, limits: Limits, proxies: &Proxies) -> Connections {
    let uri: Uri = url.parse().unwrap();
    let connector = Connector::new(
        &uri,
        limits.http2_streams.is_some(),
        &trusted_roots(&[]),
        Duration::from_secs(5),
        proxies,
    )
    .unwrap();
    Connections::new(connector, uri, HeaderMap::new(), limits).unwrap()
}

fn connections(addr: SocketAddr, limits: Limits) -> Connections {
    let url = format!("http://{addr}/v1/responses");
    connections_with(&url, limits, &Proxies::builder().build())
}

fn body(n: usize) -> super::super::body::RequestBody {
    Frame::new(|c| serde_json::to_vec(&serde_json::json!({ "input": c })).unwrap())
        .around(&format!("title {n}"))
}

/// What an HTTP/2 test server does with each connection and stream.
#[derive(Clone, Default)]
struct Plan {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    max_streams: Option<u32>,
    /// GOAWAY (graceful, as nginx at `keepalive_requests`) after this many streams.
    goaway_after: Option<usize>,
    /// Streams reset with REFUSED_STREAM, over the whole server, before any is answered.
    refuse_first: usize,
    /// How long each answer takes.
    delay: Duration,
    answer: Bytes,
    /// The first connection never answers anything (not even the preface).
    first_silent: bool,
    /// The first connection stops reading and answering, PINGs included, after this many
    /// streams, and stays open.
    silent_after: Option<usize>,
    /// Every connection after the first is closed at once.
    only_one_connection: bool,
    /// Every connection is turned away with GOAWAY right after the handshake.
    goaway_at_once: bool,
}

/// What the server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// Streams answered with 200, and refused.
    answered: AtomicUsize,
    refused: AtomicUsize,
    /// Most streams open at once on one connection.
    most_at_once: AtomicUsize,
    /// Connections that ended.
    closed: AtomicUsize,
    /// The `content-length` of every request, as sent.
    content_lengths: std::sync::Mutex<Vec<Option<String>>>,
}

async fn h2_server(plan: Plan) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counters = seen.clone();
    crate::tasks::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let n = counters.connections.fetch_add(1, Ordering::SeqCst);
            if plan.only_one_connection && n > 0 {
                continue;
            }
            if plan.first_silent && n == 0 {
                crate::tasks::spawn(async move {
                    let _held = socket;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                });
                continue;
            }
            let counters = counters.clone();
            let plan = plan.clone();
            crate::tasks::spawn(async move {
                serve_h2(socket, plan, counters.clone()).await;
                counters.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

async fn serve_h2(socket: TcpStream, plan: Plan, seen: Arc<Seen>) {
    let mut builder = h2::server::Builder::new();
    if let Some(max) = plan.max_streams {
        builder.max_concurrent_streams(max);
    }
    let Ok(mut conn) = builder.handshake::<_, Bytes>(socket).await else {
        return;
    };
    if plan.goaway_at_once {
        conn.abrupt_shutdown(Reason::NO_ERROR);
        while let Some(Ok(_)) = conn.accept().await {}
        return;
    }
    let open = Arc::new(AtomicUsize::new(0));
    let first = seen.connections.load(Ordering::SeqCst) == 1;
    let mut streams = 0;
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        streams += 1;
        let length = request.headers().get(http::header::CONTENT_LENGTH);
        let length = length.map(|v| v.to_str().unwrap().to_owned());
        seen.content_lengths.lock().unwrap().push(length);
        if first && plan.silent_after == Some(streams) {
            let _held = (conn, request, respond);
            std::future::pending::<()>().await;
            return;
        }
        if plan.goaway_after == Some(streams) {
            conn.graceful_shutdown();
        }
        if seen.refused.load(Ordering::SeqCst) < plan.refuse_first {
            seen.refused.fetch_add(1, Ordering::SeqCst);
            respond.send_reset(Reason::REFUSED_STREAM);
            continue;
        }
        let now = open.fetch_add(1, Ordering::SeqCst) + 1;
        seen.most_at_once.fetch_max(now, Ordering::SeqCst);
        let (plan, seen, open) = (plan.clone(), seen.clone(), open.clone());
        crate::tasks::spawn(async move {
            let mut body = request.into_body();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            tokio::time::sleep(plan.delay).await;
            let response = Response::builder().status(200).body(()).unwrap();
            if let Ok(mut stream) = respond.send_response(response, false) {
                let answer = if plan.answer.is_empty() {
                    Bytes::from_static(ANSWER)
                } else {
                    plan.answer.clone()
                };
                if stream.send_data(answer, true).is_ok() {
                    seen.answered.fetch_add(1, Ordering::SeqCst);
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn send_all(connections: &Arc<Connections>, n: usize) -> Vec<Result<Bytes, String>> {
    let calls = (0..n).map(|i| {
        let connections = connections.clone();
        crate::tasks::spawn(async move {
            connections
                .send(body(i))
                .await
                .map(|a| a.body)
                .map_err(|e| crate::upstream::UpstreamError::Transport(e).to_string())
        })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn a_goaway_every_ten_streams_loses_no_call_and_fresh_connections_take_over() {
    // GOAWAY after 10 streams (h2's graceful shutdown), while more are in flight.
    let (addr, seen) = h2_server(Plan {
        goaway_after: Some(10),
        delay: Duration::from_millis(5),
        ..Plan::default()
    })
    .await;
    let conns = Arc::new(connections(addr, limits(Some(100))));
    // Ten at a time, each call starting as one ends: some meet a connection whose GOAWAY has
    // arrived but that no call has found out about yet.
    use futures::StreamExt;
    let failed: Vec<_> = futures::stream::iter(0..200)
        .map(|i| conns.send(body(i)))
        .buffer_unordered(10)
        .filter_map(|r| async move { r.err().map(|e| e.to_string()) })
        .collect()
        .await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        seen.answered.load(Ordering::SeqCst),
        200,
        "each call answered once"
    );
    // Whether a stream lands above the final GOAWAY's last stream id here is a matter of
    // microseconds; nginx's GOAWAY (scripts/transport-check.sh) turns them away by the dozen.
    assert!(seen.connections.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn streams_refused_with_refused_stream_are_sent_again() {
    let (addr, seen) = h2_server(Plan {
        refuse_first: 30,
        ..Plan::default()
    })
    .await;
    let conns = Arc::new(connections(addr, limits(Some(100))));
    let results = send_all(&conns, 50).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(seen.refused.load(Ordering::SeqCst), 30);
    assert_eq!(seen.answered.load(Ordering::SeqCst), 50);
    assert_eq!(conns.resent(), 30);
}

#[tokio::test]
async fn a_connection_that_keeps_refusing_streams_is_left_for_another_and_lengths_are_sent() {
    let (addr, seen) = h2_server(Plan {
        refuse_first: 3,
        ..Plan::default()
    })
    .await;
    let conns = Arc::new(connections(addr, limits(Some(100))));
    let results = send_all(&conns, 1).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        2,
        "three refusals in a row retire a connection; the resend goes to a new one"
    );
    let lengths = seen.content_lengths.lock().unwrap().clone();
    let sent = Some(bytes::Buf::remaining(&body(0)).to_string());
    assert_eq!(lengths, vec![sent; 4], "as hyper sends it");
}

#[tokio::test]
async fn a_server_that_turns_every_new_connection_away_costs_one_opening_not_a_storm() {
    let (addr, seen) = h2_server(Plan {
        goaway_at_once: true,
        ..Plan::default()
    })
    .await;
    let conns = Arc::new(connections(addr, limits(Some(100))));
    let results = send_all(&conns, 20).await;
    assert!(results.iter().all(Result::is_err), "{results:?}");
    // Turned away before it answered anything (here before our first PING's answer): as good
    // as a failed opening, so the calls share its error instead of each opening another.
    let error = results[0].as_ref().unwrap_err();
    assert!(error.contains("could not reach the upstream"), "{error}");
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        1,
        "the next opening waits: a failed opening"
    );
}

#[tokio::test]
async fn a_connection_past_its_maximum_age_takes_no_new_call_and_a_fresh_one_does() {
    let (addr, seen) = h2_server(Plan::default()).await;
    let conns = Arc::new(connections(
        addr,
        Limits {
            max_connection_age: Duration::from_millis(50),
            ..limits(Some(100))
        },
    ));
    assert!(send_all(&conns, 3).await.iter().all(Result::is_ok));
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(send_all(&conns, 3).await.iter().all(Result::is_ok));
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        2,
        "retired, replaced"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        seen.closed.load(Ordering::SeqCst) >= 1,
        "the old one closed"
    );
}

#[tokio::test]
async fn the_servers_stream_limit_is_honoured_by_opening_more_connections() {
    let (addr, seen) = h2_server(Plan {
        max_streams: Some(4),
        delay: Duration::from_millis(200),
        ..Plan::default()
    })
    .await;
    let conns = Arc::new(connections(addr, limits(Some(100))));
    let results = send_all(&conns, 40).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(seen.most_at_once.load(Ordering::SeqCst) <= 4);
    // 40 calls at once, 4 per connection: no call waits inside h2 for a stream of its own.
    assert!(
        seen.connections.load(Ordering::SeqCst) >= 10,
        "{} connections",
        seen.connections.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn our_own_stream_limit_opens_more_connections_too() {
    let (addr, seen) = h2_server(Plan {
        delay: Duration::from_millis(100),
        ..Plan::default()
    })
    .await;
    let conns = Arc::new(connections(addr, limits(Some(8))));
    assert!(send_all(&conns, 32).await.iter().all(Result::is_ok));
    assert!(seen.most_at_once.load(Ordering::SeqCst) <= 8);
    assert!(seen.connections.load(Ordering::SeqCst) >= 4);
}

#[tokio::test]
async fn a_connection_that_stops_answering_pings_is_replaced_and_its_calls_fail_as_such() {
    // The first connection goes silent after its 4th stream: nothing read, nothing closed, as
    // when a NAT or load balancer drops it without a word.
    let (addr, seen) = h2_server(Plan {
        silent_after: Some(4),
        delay: Duration::from_millis(300),
        ..Plan::default()
    })
    .await;
    let mut limits = limits(Some(100));
    limits.liveness = Liveness {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(100),
    };
    let conns = Arc::new(connections(addr, limits));
    let started = tokio::time::Instant::now();
    let results = send_all(&conns, 4).await;
    // Found by the PING check (a call timeout would say so, and there is none here).
    for result in &results {
        let error = result
            .as_ref()
            .expect_err("the call was on the silent connection");
        assert!(error.contains("stopped answering PINGs"), "{error}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The next calls open a fresh connection, which answers.
    assert!(send_all(&conns, 3).await.iter().all(Result::is_ok));
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failed_opening_beside_a_full_connection_makes_calls_wait_for_room_not_fail() {
    // Two streams a connection, and every further connection refused (a load balancer's
    // connection limit): six calls share the one connection, two at a time.
    let (addr, seen) = h2_server(Plan {
        max_streams: Some(2),
        only_one_connection: true,
        delay: Duration::from_millis(100),
        ..Plan::default()
    })
    .await;
    let conns = Arc::new(connections(addr, limits(Some(100))));
    assert!(send_all(&conns, 1).await.iter().all(Result::is_ok));
    let results = send_all(&conns, 6).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(
        seen.connections.load(Ordering::SeqCst) >= 2,
        "another was tried"
    );
}

#[tokio::test]
async fn a_connection_nothing_holds_any_more_is_closed() {
    let (addr, seen) = h2_server(Plan::default()).await;
    let conns = connections(addr, limits(Some(100)));
    conns.send(body(0)).await.unwrap();
    assert_eq!(seen.closed.load(Ordering::SeqCst), 0);
    drop(conns);
    for _ in 0..100 {
        if seen.closed.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the connection outlived its pool (its PINGs keep it open)");
}

#[tokio::test]
async fn an_opening_cancelled_halfway_does_not_fail_the_calls_that_waited_for_it() {
    let (addr, seen) = h2_server(Plan {
        first_silent: true,
        ..Plan::default()
    })
    .await;
    let conns = Arc::new(connections(addr, limits(Some(100))));
    let first = {
        let conns = conns.clone();
        // Opens the silent connection, then is given up on.
        crate::tasks::spawn(async move {
            tokio::time::timeout(Duration::from_millis(300), conns.send(body(0))).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = conns.send(body(1)).await;
    assert!(
        first.await.unwrap().is_err(),
        "the first call was cancelled"
    );
    assert!(second.is_ok(), "{:?}", second.err());
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failed_opening_is_shared_with_the_calls_that_come_during_its_wait() {
    // A port nobody listens on.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for http2 in [Some(100), None] {
        let conns = connections(addr, limits(http2));
        let first = conns.send(body(0)).await.unwrap_err();
        let second = conns.send(body(1)).await.unwrap_err();
        assert!(first.to_string().contains("could not connect"), "{first}");
        let (TransportError::Shared(a), TransportError::Shared(b)) = (&first, &second) else {
            panic!("shared failures: {first:?} {second:?}");
        };
        assert!(Arc::ptr_eq(a, b), "the second call did not try again");
    }
}

#[tokio::test]
async fn the_whole_opening_has_one_timeout() {
    // Accepts, then says nothing: TCP succeeds, the handshake never completes.
    let (addr, _) = h2_server(Plan {
        first_silent: true,
        ..Plan::default()
    })
    .await;
    let mut limits = limits(Some(100));
    limits.open_timeout = Duration::from_millis(200);
    let error = connections(addr, limits).send(body(0)).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("opening a connection took more than 0.2s"),
        "{error}"
    );
}

#[tokio::test]
async fn a_response_over_the_cap_fails_naming_it_over_both_protocols() {
    let big = Bytes::from(vec![b'x'; 4096]);
    let (addr, _) = h2_server(Plan {
        answer: big.clone(),
        ..Plan::default()
    })
    .await;
    let mut capped = limits(Some(100));
    capped.max_response_bytes = 1024;
    let error = connections(addr, capped).send(body(0)).await.unwrap_err();
    assert!(error.is_too_large(), "{error}");
    assert!(error.to_string().contains("(1024 bytes)"), "{error}");

    let addr = http1_server(move || big.clone()).await;
    capped.http2_streams = None;
    let error = connections(addr, capped).send(body(0)).await.unwrap_err();
    assert!(error.is_too_large(), "{error}");
}

/// An HTTP/1.1 server (hyper's) answering every request with `answer()`.
async fn http1_server(answer: impl Fn() -> Bytes + Clone + Send + Sync + 'static) -> SocketAddr {
    use hyper::service::service_fn;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    crate::tasks::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            crate::tasks::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = http_body_util::Full::new(answer());
                    async move { Ok::<_, std::convert::Infallible>(Response::new(body)) }
                });
                let io = hyper_util::rt::TokioIo::new(socket);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn idle_http1_connections_are_reaped_on_their_age() {
    let addr = http1_server(|| Bytes::from_static(ANSWER)).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let sender = super::http1::handshake(super::connect::Stream::Plain(stream))
        .await
        .unwrap();
    let idle = Idle::new(8).with_idle_for(Duration::from_millis(50));
    idle.put(sender);
    assert_eq!(idle.len(), 1);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(
        idle.take().await.is_none(),
        "an idle connection past its age"
    );
    assert_eq!(idle.len(), 0);
}

/// A proxy that records the first request's head and answers it: 200 with a body to a plain
/// request, 200 "Connection established" to a CONNECT (then relays nothing).
async fn recording_proxy() -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    crate::tasks::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let reply: &[u8] = if head.starts_with("CONNECT") {
            b"HTTP/1.1 200 Connection established\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"
        };
        let _ = tx.send(head);
        let _ = socket.write_all(reply).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    (addr, rx)
}

#[tokio::test]
async fn an_http_upstream_goes_through_a_forward_proxy_in_absolute_form() {
    let (proxy, head) = recording_proxy().await;
    let proxies = Proxies::builder()
        .http(format!("http://user:pass@{proxy}"))
        .build();
    let conns = connections_with(
        "http://upstream.example:8080/v1/responses",
        limits(None),
        &proxies,
    );
    let answer = conns.send(body(0)).await.unwrap();
    assert_eq!(&answer.body[..], ANSWER);
    let head = head.await.unwrap();
    assert!(
        head.starts_with("POST http://upstream.example:8080/v1/responses HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_lowercase().contains("proxy-authorization: basic "),
        "{head}"
    );
}

#[tokio::test]
async fn a_tunnel_aims_at_the_origins_port_written_or_implied() {
    for (url, http2, target) in [
        ("https://upstream.example/v1", true, "upstream.example:443"),
        ("http://upstream.example/v1", true, "upstream.example:80"),
        (
            "https://upstream.example:8443/v1",
            false,
            "upstream.example:8443",
        ),
    ] {
        let (proxy, head) = recording_proxy().await;
        let proxies = Proxies::builder()
            .http(format!("http://{proxy}"))
            .https(format!("http://{proxy}"))
            .build();
        let mut limits = limits(http2.then_some(100));
        limits.open_timeout = Duration::from_millis(300);
        let conns = connections_with(url, limits, &proxies);
        // Nothing answers inside the tunnel: the call fails; what matters is where it aimed.
        let _ = conns.send(body(0)).await;
        let head = head.await.unwrap();
        assert!(
            head.starts_with(&format!("CONNECT {target} HTTP/1.1")),
            "{url}: {head}"
        );
    }
}

#[test]
fn an_https_or_socks_proxy_url_is_refused_at_start_up_saying_why() {
    let proxies = Proxies::builder()
        .https("https://user:secret@proxy.example:3128")
        .build();
    let uri: Uri = "https://api.openai.com/v1/responses".parse().unwrap();
    let error = Connector::new(
        &uri,
        true,
        &trusted_roots(&[]),
        Duration::from_secs(1),
        &proxies,
    )
    .unwrap_err();
    assert!(matches!(error, BuildError::UnsupportedProxy { .. }));
    let message = error.to_string();
    assert!(message.contains("a https:// URL"), "{message}");
    assert!(message.contains("http://HOST:PORT"), "{message}");
    assert!(!message.contains("secret"), "{message}");
    let socks = Proxies::builder()
        .all("socks5://proxy.example:1080")
        .build();
    let error = Connector::new(
        &uri,
        true,
        &trusted_roots(&[]),
        Duration::from_secs(1),
        &socks,
    )
    .unwrap_err();
    assert!(error.to_string().contains("a socks5:// URL"), "{error}");
}
