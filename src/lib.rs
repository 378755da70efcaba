//! hn-classifier: classify short texts with an LLM at the provider's full throughput.
//!
//! Dependencies point one way: `api` (HTTP edge) -> `classify` (batch fan-out) -> `upstream`
//! (provider protocol), beside `sim` (the fake provider). `startup` wires them; `main.rs` only
//! parses the command line.

pub mod api;
pub mod batch_api;
pub mod bench;
pub mod classify;
pub mod cli;
pub mod client;
pub mod config;
pub mod coord;
pub mod eval;
pub mod gold;
pub mod jobs;
pub mod lifecycle;
pub mod metrics;
pub mod models;
pub mod plot;
pub mod progress;
pub mod secret;
pub mod server;
pub mod sim;
pub mod startup;
pub mod tasks;
pub mod taxonomy;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
