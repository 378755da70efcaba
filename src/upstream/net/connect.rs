//! Opening one connection to an endpoint: TCP (hyper-util's connector over hickory's resolver:
//! happy eyeballs, nodelay, connect timeout), through the proxy that HTTPS_PROXY, HTTP_PROXY or
//! ALL_PROXY names unless NO_PROXY exempts the host, then TLS with ALPN for `https://`. Per
//! connection, never per call: the call path is `connections.rs`.
//!
//! A proxy is used as curl, hyper-util's legacy client and every browser use one: an `https://`
//! upstream (or h2c, which a forward proxy cannot carry) through a CONNECT tunnel to the
//! origin's port, an `http://` one as a forward proxy, each request in absolute form. Proxies
//! commonly allow CONNECT to port 443 only (Squid's default `SSL_ports`), so tunnelling plain
//! HTTP is refused where forwarding it works.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tower::ServiceExt;

use super::dns::Resolver;
use crate::upstream::error::{BuildError, TransportError};

/// What an open connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// The roots every endpoint trusts: the compiled-in ones (an image with no certificate store
/// still reaches OpenAI), the operating system's store, and HNC_UPSTREAM_CA_FILE's. Built once:
/// reading the system store takes milliseconds.
pub fn trusted_roots(extra: &[CertificateDer<'static>]) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // A missing or partly unreadable system store is not fatal: the compiled-in roots remain.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    roots.add_parsable_certificates(extra.iter().cloned());
    Arc::new(roots)
}

/// A forward proxy's part in each request: its credentials (`Proxy-Authorization`), if any.
pub struct ForwardProxy<'a> {
    pub auth: Option<&'a HeaderValue>,
}

/// How a connection reaches the origin.
#[derive(Clone)]
enum Route {
    Direct,
    /// A CONNECT tunnel through the proxy to the origin.
    Tunnel(Tunnel<HttpConnector<Resolver>>),
    /// To the forward proxy itself, which gets absolute-form requests (HTTP/1.1 over `http://`).
    Forward {
        proxy: Uri,
        auth: Option<HeaderValue>,
    },
}

/// Opens connections to one origin (scheme, host, port).
#[derive(Clone)]
pub struct Connector {
    /// With its port always written out: a CONNECT tunnel to a URL without one aims at 443.
    origin: Uri,
    tcp: HttpConnector<Resolver>,
    route: Route,
    /// For `https://`: the TLS client (its ALPN offers h2 only when HTTP/2 is wanted) and the
    /// name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Over `http://`: whether the server is assumed to speak HTTP/2 (prior knowledge).
    cleartext: Protocol,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("origin", &self.origin)
            .field("proxied", &!matches!(self.route, Route::Direct))
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `url`'s origin; `http2` asks for HTTP/2 (negotiated over TLS, assumed
    /// over cleartext); `proxies` are the proxy variables (`Matcher::from_env()`).
    pub fn new(
        url: &Uri,
        http2: bool,
        roots: &Arc<RootCertStore>,
        connect_timeout: Duration,
        proxies: &Matcher,
    ) -> Result<Self, BuildError> {
        let host = url.host().ok_or(BuildError::InvalidUrl)?.to_owned();
        let https = url.scheme_str() == Some("https");
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let origin = Uri::builder()
            .scheme(if https { "https" } else { "http" })
            .authority(format!("{host}:{port}"))
            .path_and_query("/")
            .build()
            .map_err(|_| BuildError::InvalidUrl)?;
        let mut tcp = HttpConnector::new_with_resolver(Resolver);
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        let route = match proxies.intercept(url) {
            None => Route::Direct,
            Some(proxy) if proxy.uri().scheme_str() != Some("http") => {
                return Err(BuildError::UnsupportedProxy {
                    origin: format!("{}://{host}:{port}", origin.scheme_str().unwrap_or("http")),
                    scheme: proxy.uri().scheme_str().unwrap_or("").to_owned(),
                });
            }
            // h2c cannot pass a forward proxy (it would downgrade or refuse the preface).
            Some(proxy) if https || http2 => {
                let tunnel = Tunnel::new(proxy.uri().clone(), tcp.clone());
                Route::Tunnel(match proxy.basic_auth() {
                    Some(auth) => tunnel.with_auth(auth.clone()),
                    None => tunnel,
                })
            }
            Some(proxy) => Route::Forward {
                proxy: proxy.uri().clone(),
                auth: proxy.basic_auth().cloned(),
            },
        };
        let tls = https.then(|| tls_client(&host, http2, roots)).transpose()?;
        Ok(Self {
            origin,
            tcp,
            route,
            tls,
            cleartext: if http2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            },
        })
    }

    /// The forward proxy requests go to, in absolute form; `None` when they go to the origin
    /// (directly or through a tunnel).
    pub fn forward_proxy(&self) -> Option<ForwardProxy<'_>> {
        match &self.route {
            Route::Forward { auth, .. } => Some(ForwardProxy {
                auth: auth.as_ref(),
            }),
            _ => None,
        }
    }

    /// One new connection, and what it speaks.
    pub async fn connect(&self) -> Result<(Stream, Protocol), TransportError> {
        let tcp =
            match &self.route {
                Route::Tunnel(tunnel) => tunnel
                    .clone()
                    .oneshot(self.origin.clone())
                    .await
                    .map_err(|e| {
                        // hyper-util does not export its tunnel error type: its text is the cause.
                        if e.to_string().ends_with("proxy authorization required") {
                            TransportError::ProxyCredentials
                        } else {
                            TransportError::Proxy(e.into())
                        }
                    })?,
                Route::Direct => self
                    .tcp
                    .clone()
                    .oneshot(self.origin.clone())
                    .await
                    .map_err(|e| TransportError::Connect(e.into()))?,
                Route::Forward { proxy, .. } => self
                    .tcp
                    .clone()
                    .oneshot(proxy.clone())
                    .await
                    .map_err(|e| TransportError::Connect(e.into()))?,
            }
            .into_inner();
        let Some((tls, name)) = &self.tls else {
            return Ok((Stream::Plain(tcp), self.cleartext));
        };
        let stream = tls
            .connect(name.clone(), tcp)
            .await
            .map_err(TransportError::Tls)?;
        let protocol = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        Ok((Stream::Tls(Box::new(stream)), protocol))
    }
}

/// The TLS client for `host` (its ALPN offers h2 only when HTTP/2 is wanted), and the name its
/// certificate must carry.
fn tls_client(
    host: &str,
    http2: bool,
    roots: &Arc<RootCertStore>,
) -> Result<(TlsConnector, ServerName<'static>), BuildError> {
    // ring named, not the process default: which providers get compiled in depends on every
    // crate's features, and with two and no default the builder would panic.
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports TLS 1.2 and 1.3")
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|_| BuildError::InvalidUrl)?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// A connection's byte stream, with or without TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
