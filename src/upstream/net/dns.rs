//! Host names resolved by hickory's resolver, not the C library's `getaddrinfo`: the image is a
//! static binary in an empty filesystem (no NSS modules to load), and hickory reads
//! `/etc/resolv.conf` and `/etc/hosts` itself, which Docker and Kubernetes mount. IP literals
//! never get here (the connector parses them first).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;
use hyper_util::client::legacy::connect::dns::Name;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The process's resolver, built on first use (inside the runtime) from the system's settings,
/// or why it could not be.
fn resolver() -> Result<&'static TokioResolver, Arc<str>> {
    static RESOLVER: OnceLock<Result<TokioResolver, Arc<str>>> = OnceLock::new();
    RESOLVER
        .get_or_init(|| {
            let mut builder = TokioResolver::builder_tokio().map_err(|e| {
                Arc::from(format!(
                    "could not read the DNS settings (/etc/resolv.conf): {e}"
                ))
            })?;
            // Both families: the connector tries them in turn (happy eyeballs).
            builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            Ok(builder.build())
        })
        .as_ref()
        .map_err(Arc::clone)
}

/// The addresses of `host` (an IP literal is its own), through the same resolver: for callers
/// outside the connector (job webhooks), which must not call `getaddrinfo` either.
pub async fn lookup(host: &str) -> Result<Vec<std::net::IpAddr>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![ip]);
    }
    let resolver = resolver().map_err(|e| e.to_string())?;
    let found = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
    Ok(found.iter().collect())
}

/// hyper-util's connector asks this for a host's addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolver;

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            let resolver = resolver().map_err(|e| BoxError::from(e.to_string()))?;
            let found = resolver.lookup_ip(name.as_str()).await?;
            // The port is the connector's to set.
            let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(addrs.into_iter())
        })
    }
}
