//! An endpoint's HTTP connections, managed here rather than by a general-purpose client: one
//! small future per call and no per-request boxing, so ten thousand calls in flight fit in a few
//! KiB each (DESIGN target 4). HTTP/2 connections are shared by many calls, HTTP/1.1 ones are
//! kept idle between calls.

mod connect;
mod connections;
mod dns;

pub use connect::{Connector, trusted_roots};
pub use connections::{Answer, Connections};
