//! An endpoint's HTTP connections, managed here rather than by a general-purpose client: one
//! small future per call, boxing only what is rare (opening, waiting for room, HTTP/1.1's
//! exchange), so ten thousand calls in flight fit in a few
//! KiB each (docs/BENCHMARKS.md, memory at 10,000 calls in flight). HTTP/2 connections are shared by many calls
//! (`http2.rs`), HTTP/1.1 ones are kept idle between calls (`http1.rs`); `connections.rs` sends
//! one call over either, and `connect.rs` opens a connection (proxy, TLS).

mod connect;
mod connections;
mod dns;
mod http1;
mod http2;
mod openings;
#[cfg(test)]
mod tests;

pub use connect::{Connector, trusted_roots};
pub use connections::{Answer, Connections, Limits};
pub use dns::lookup;
pub use http2::Liveness;
pub use hyper_util::client::proxy::matcher::Matcher as Proxies;
pub use openings::Outage;
